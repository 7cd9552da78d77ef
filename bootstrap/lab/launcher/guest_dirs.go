package main

import (
	"os"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// DeleteDirectoryInGuest deletes a directory: only an empty one unless recursive
// (DirectoryNotEmpty otherwise), NotADirectory for a file.
func (m *fileManager) DeleteDirectoryInGuest(req *types.DeleteDirectoryInGuest) soap.HasFault {
	body := new(methods.DeleteDirectoryInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.DeleteDirectoryInGuestResponse, *soap.Fault) {
		hostDir := g.hostPath(req.DirectoryPath)
		info, err := os.Lstat(hostDir)
		if err != nil {
			return nil, fileFault(req.DirectoryPath, err)
		}
		if !info.IsDir() {
			return nil, simulator.Fault("", &types.NotADirectory{FileFault: types.FileFault{File: req.DirectoryPath}})
		}
		if req.Recursive {
			err = os.RemoveAll(hostDir)
		} else if entries, readErr := os.ReadDir(hostDir); readErr != nil {
			err = readErr
		} else if len(entries) > 0 {
			return nil, simulator.Fault("", &types.DirectoryNotEmpty{FileFault: types.FileFault{File: req.DirectoryPath}})
		} else {
			err = os.Remove(hostDir)
		}
		if err != nil {
			return nil, fileFault(req.DirectoryPath, err)
		}
		return new(types.DeleteDirectoryInGuestResponse), nil
	})
	return body
}

// MoveFileInGuest renames a file; FileAlreadyExists when the destination exists and
// overwrite is false, NotAFile for a directory.
func (m *fileManager) MoveFileInGuest(req *types.MoveFileInGuest) soap.HasFault {
	body := new(methods.MoveFileInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.MoveFileInGuestResponse, *soap.Fault) {
		src, dst := g.hostPath(req.SrcFilePath), g.hostPath(req.DstFilePath)
		info, err := os.Lstat(src)
		if err != nil {
			return nil, fileFault(req.SrcFilePath, err)
		}
		if info.IsDir() {
			return nil, notAFile(req.SrcFilePath)
		}
		if _, err := os.Lstat(dst); err == nil && !req.Overwrite {
			return nil, fileAlreadyExists(req.DstFilePath)
		}
		if err := os.Rename(src, dst); err != nil {
			return nil, fileFault(req.DstFilePath, err)
		}
		return new(types.MoveFileInGuestResponse), nil
	})
	return body
}

// MoveDirectoryInGuest renames a directory; FileAlreadyExists when the destination
// exists.
func (m *fileManager) MoveDirectoryInGuest(req *types.MoveDirectoryInGuest) soap.HasFault {
	body := new(methods.MoveDirectoryInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.MoveDirectoryInGuestResponse, *soap.Fault) {
		src, dst := g.hostPath(req.SrcDirectoryPath), g.hostPath(req.DstDirectoryPath)
		info, err := os.Lstat(src)
		if err != nil {
			return nil, fileFault(req.SrcDirectoryPath, err)
		}
		if !info.IsDir() {
			return nil, simulator.Fault("", &types.NotADirectory{FileFault: types.FileFault{File: req.SrcDirectoryPath}})
		}
		if _, err := os.Lstat(dst); err == nil {
			return nil, fileAlreadyExists(req.DstDirectoryPath)
		}
		if err := os.Rename(src, dst); err != nil {
			return nil, fileFault(req.DstDirectoryPath, err)
		}
		return new(types.MoveDirectoryInGuestResponse), nil
	})
	return body
}
