// Added to govmomi's simulator package at build time (go build -overlay): version 0.24
// has no VirtualMachine.CreateScreenshot_Task, and a method can only be declared in the
// package of its receiver. The launcher supplies the picture through Screenshot.

package simulator

import (
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Screenshot saves a picture of vm's console in the VM's directory on its datastore
// and returns the file's datastore path ("[datastore] VM/VM-1.png"); nil means the
// simulator has no console to take it from.
var Screenshot func(vm *VirtualMachine) (string, types.BaseMethodFault)

// CreateScreenshotTask answers VirtualMachine.CreateScreenshot_Task as vSphere does:
// a task whose result is the screenshot's datastore path.
func (vm *VirtualMachine) CreateScreenshotTask(ctx *Context, req *types.CreateScreenshot_Task) soap.HasFault {
	task := CreateTask(vm, "createScreenshot", func(*Task) (types.AnyType, types.BaseMethodFault) {
		if Screenshot == nil {
			return nil, &types.NotSupported{}
		}
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
			return nil, &types.InvalidPowerState{
				RequestedState: types.VirtualMachinePowerStatePoweredOn,
				ExistingState:  vm.Runtime.PowerState,
			}
		}
		return Screenshot(vm)
	})
	return &methods.CreateScreenshot_TaskBody{Res: &types.CreateScreenshot_TaskResponse{Returnval: task.Run()}}
}
