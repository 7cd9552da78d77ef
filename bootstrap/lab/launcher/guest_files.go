package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	transferPath = "/lab/guestFile"
	transferTTL  = 10 * time.Minute
)

// fileManager is the lab's GuestFileManager: files live in the guest's file system.
// It embeds the managed object type, as every simulator object must.
type fileManager struct {
	mo.GuestFileManager
	lab *lab
}

// transfer is one URL handed out by InitiateFileTransferToGuest / FromGuest.
type transfer struct {
	guest     *guest
	hostFile  string
	upload    bool
	size      int64
	overwrite bool
	mode      os.FileMode
	expires   time.Time
}

type transfers struct {
	transfersMu sync.Mutex
	pending     map[string]*transfer
}

func (t *transfers) init() { t.pending = map[string]*transfer{} }

func (l *lab) transferURL(tr *transfer) string {
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	id := hex.EncodeToString(token)
	l.transfersMu.Lock()
	l.pending[id] = tr
	l.transfersMu.Unlock()
	u := *l.baseURL
	u.Path = transferPath
	u.RawQuery = url.Values{"id": {id}}.Encode()
	return u.String()
}

func (l *lab) takeTransfer(id string, upload bool) *transfer {
	l.transfersMu.Lock()
	defer l.transfersMu.Unlock()
	tr := l.pending[id]
	if tr == nil || tr.upload != upload || time.Now().After(tr.expires) {
		return nil
	}
	delete(l.pending, id)
	return tr
}

// serveTransfer answers the transfer URLs: PUT writes the guest file, GET reads it.
// Each URL works once, as in vSphere.
func (l *lab) serveTransfer(w http.ResponseWriter, r *http.Request) {
	upload := r.Method == http.MethodPut || r.Method == http.MethodPost
	if !upload && r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	tr := l.takeTransfer(r.URL.Query().Get("id"), upload)
	if tr == nil {
		http.Error(w, "unknown or expired transfer", http.StatusNotFound)
		return
	}
	if !upload {
		http.ServeFile(w, r, tr.hostFile)
		return
	}
	if err := writeGuestFile(tr, r.Body); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// writeGuestFile writes through a temporary file renamed into place, so a failed
// transfer leaves the guest file as it was.
func writeGuestFile(tr *transfer, body io.Reader) error {
	if !tr.overwrite {
		if _, err := os.Lstat(tr.hostFile); err == nil {
			return errors.New("file exists and overwrite is false")
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(tr.hostFile), ".lab-transfer-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, body); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(tr.mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := tr.guest.own(tmp.Name()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), tr.hostFile)
}

// own gives a file the lab created to the guest login, as VMware Tools acts as the
// authenticated user.
func (g *guest) own(hostFile string) error {
	if g.cfg.GuestUID == 0 {
		return nil
	}
	return os.Lchown(hostFile, g.cfg.GuestUID, g.cfg.GuestUID)
}

func fileNotFound(guestFile string) *soap.Fault {
	return simulator.Fault("", &types.FileNotFound{FileFault: types.FileFault{File: guestFile}})
}

func fileAlreadyExists(guestFile string) *soap.Fault {
	return simulator.Fault("", &types.FileAlreadyExists{FileFault: types.FileFault{File: guestFile}})
}

func notAFile(guestFile string) *soap.Fault {
	return simulator.Fault("", &types.NotAFile{FileFault: types.FileFault{File: guestFile}})
}

// fileFault is the vSphere fault for a failed file system call on guestFile.
func fileFault(guestFile string, err error) *soap.Fault {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fileNotFound(guestFile)
	case errors.Is(err, fs.ErrExist):
		return fileAlreadyExists(guestFile)
	case errors.Is(err, fs.ErrPermission):
		return simulator.Fault("", &types.NoPermission{})
	}
	return simulator.Fault(err.Error(), &types.GuestOperationsFault{})
}

// InitiateFileTransferToGuest returns a URL that takes one HTTP PUT of the file.
func (m *fileManager) InitiateFileTransferToGuest(req *types.InitiateFileTransferToGuest) soap.HasFault {
	body := new(methods.InitiateFileTransferToGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.InitiateFileTransferToGuestResponse, *soap.Fault) {
		hostFile := g.hostPath(req.GuestFilePath)
		if info, err := os.Stat(filepath.Dir(hostFile)); err != nil || !info.IsDir() {
			return nil, fileNotFound(req.GuestFilePath)
		}
		if info, err := os.Lstat(hostFile); err == nil {
			if info.IsDir() {
				return nil, notAFile(req.GuestFilePath)
			}
			if !req.Overwrite {
				return nil, fileAlreadyExists(req.GuestFilePath)
			}
		}
		mode := os.FileMode(0o644)
		if posix, ok := req.FileAttributes.(*types.GuestPosixFileAttributes); ok && posix.Permissions != 0 {
			mode = os.FileMode(posix.Permissions & 0o7777)
		}
		tr := &transfer{guest: g, hostFile: hostFile, upload: true, size: req.FileSize,
			overwrite: req.Overwrite, mode: mode, expires: time.Now().Add(transferTTL)}
		return &types.InitiateFileTransferToGuestResponse{Returnval: m.lab.transferURL(tr)}, nil
	})
	return body
}

// InitiateFileTransferFromGuest returns the file's size and attributes and a URL that
// serves one HTTP GET of it.
func (m *fileManager) InitiateFileTransferFromGuest(req *types.InitiateFileTransferFromGuest) soap.HasFault {
	body := new(methods.InitiateFileTransferFromGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.InitiateFileTransferFromGuestResponse, *soap.Fault) {
		hostFile := g.hostPath(req.GuestFilePath)
		info, err := os.Stat(hostFile)
		if err != nil {
			return nil, fileFault(req.GuestFilePath, err)
		}
		if info.IsDir() {
			return nil, notAFile(req.GuestFilePath)
		}
		tr := &transfer{guest: g, hostFile: hostFile, expires: time.Now().Add(transferTTL)}
		return &types.InitiateFileTransferFromGuestResponse{Returnval: types.FileTransferInformation{
			Attributes: posixAttributes(info), Size: info.Size(), Url: m.lab.transferURL(tr),
		}}, nil
	})
	return body
}

func posixAttributes(info os.FileInfo) *types.GuestPosixFileAttributes {
	modified := info.ModTime()
	attributes := &types.GuestPosixFileAttributes{Permissions: int64(info.Mode().Perm())}
	attributes.ModificationTime = &modified
	if stat, ok := info.Sys().(*syscallStat); ok {
		uid, gid := int32(stat.Uid), int32(stat.Gid)
		attributes.OwnerId, attributes.GroupId = &uid, &gid
	}
	return attributes
}

// MakeDirectoryInGuest creates a directory, and its parents when asked.
func (m *fileManager) MakeDirectoryInGuest(req *types.MakeDirectoryInGuest) soap.HasFault {
	body := new(methods.MakeDirectoryInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.MakeDirectoryInGuestResponse, *soap.Fault) {
		hostDir := g.hostPath(req.DirectoryPath)
		var missing []string
		for dir := hostDir; ; dir = filepath.Dir(dir) {
			if _, err := os.Lstat(dir); err == nil || dir == filepath.Dir(dir) {
				break
			}
			missing = append(missing, dir)
		}
		var err error
		if req.CreateParentDirectories {
			err = os.MkdirAll(hostDir, 0o755)
		} else {
			err = os.Mkdir(hostDir, 0o755)
		}
		if err != nil {
			return nil, fileFault(req.DirectoryPath, err)
		}
		for _, dir := range missing {
			if err := g.own(dir); err != nil {
				return nil, fileFault(req.DirectoryPath, err)
			}
		}
		return new(types.MakeDirectoryInGuestResponse), nil
	})
	return body
}

// DeleteFileInGuest deletes a file; a directory is refused with NotAFile.
func (m *fileManager) DeleteFileInGuest(req *types.DeleteFileInGuest) soap.HasFault {
	body := new(methods.DeleteFileInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.DeleteFileInGuestResponse, *soap.Fault) {
		hostFile := g.hostPath(req.FilePath)
		info, err := os.Lstat(hostFile)
		if err == nil && info.IsDir() {
			return nil, notAFile(req.FilePath)
		}
		if err == nil {
			err = os.Remove(hostFile)
		}
		if err != nil {
			return nil, fileFault(req.FilePath, err)
		}
		return new(types.DeleteFileInGuestResponse), nil
	})
	return body
}

// ListFilesInGuest lists a directory (or names one file), sorted by name, with
// index/maxResults paging and an optional regular expression on names.
func (m *fileManager) ListFilesInGuest(req *types.ListFilesInGuest) soap.HasFault {
	body := new(methods.ListFilesInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.ListFilesInGuestResponse, *soap.Fault) {
		hostFile := g.hostPath(req.FilePath)
		info, err := os.Lstat(hostFile)
		if err != nil {
			return nil, fileFault(req.FilePath, err)
		}
		var pattern *regexp.Regexp
		if req.MatchPattern != "" {
			if pattern, err = regexp.Compile(req.MatchPattern); err != nil {
				return nil, simulator.Fault(err.Error(), &types.InvalidArgument{InvalidProperty: "matchPattern"})
			}
		}
		var files []types.GuestFileInfo
		if info.IsDir() {
			entries, err := os.ReadDir(hostFile)
			if err != nil {
				return nil, fileFault(req.FilePath, err)
			}
			names := []string{".", ".."}
			for _, entry := range entries {
				names = append(names, entry.Name())
			}
			sort.Strings(names)
			for _, name := range names {
				if pattern != nil && !pattern.MatchString(name) {
					continue
				}
				if entry, err := os.Lstat(filepath.Join(hostFile, name)); err == nil {
					files = append(files, guestFileInfo(name, entry))
				}
			}
		} else {
			files = append(files, guestFileInfo(req.FilePath, info))
		}
		start := int(req.Index)
		if start > len(files) {
			start = len(files)
		}
		files = files[start:]
		remaining := 0
		if req.MaxResults > 0 && len(files) > int(req.MaxResults) {
			remaining = len(files) - int(req.MaxResults)
			files = files[:req.MaxResults]
		}
		return &types.ListFilesInGuestResponse{Returnval: types.GuestListFileInfo{Files: files, Remaining: int32(remaining)}}, nil
	})
	return body
}

func guestFileInfo(name string, info os.FileInfo) types.GuestFileInfo {
	kind := "file"
	switch {
	case info.IsDir():
		kind = "directory"
	case info.Mode()&os.ModeSymlink != 0:
		kind = "symlink"
	}
	return types.GuestFileInfo{Path: name, Type: kind, Size: info.Size(), Attributes: posixAttributes(info)}
}

// CreateTemporaryFileInGuest creates an empty file named prefix…suffix in the
// directory given (the guest's temporary directory by default) and returns its path.
func (m *fileManager) CreateTemporaryFileInGuest(req *types.CreateTemporaryFileInGuest) soap.HasFault {
	body := new(methods.CreateTemporaryFileInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.CreateTemporaryFileInGuestResponse, *soap.Fault) {
		dir := req.DirectoryPath
		if dir == "" {
			dir = "/tmp"
			if g.windows() {
				dir = `C:\Windows\Temp`
			}
		}
		file, err := os.CreateTemp(g.hostPath(dir), req.Prefix+"*"+req.Suffix)
		if err != nil {
			return nil, fileFault(dir, err)
		}
		file.Close()
		if err := g.own(file.Name()); err != nil {
			return nil, fileFault(dir, err)
		}
		return &types.CreateTemporaryFileInGuestResponse{Returnval: g.guestPathOf(file.Name(), dir)}, nil
	})
	return body
}
