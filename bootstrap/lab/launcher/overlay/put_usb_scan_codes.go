// Added to govmomi's simulator package at build time (go build -overlay): version 0.24
// has no VirtualMachine.PutUsbScanCodes, and a method can only be declared in the
// package of its receiver. The launcher supplies the behaviour through UsbScanCodes.

package simulator

import (
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// UsbScanCodes types the key events of spec into vm's console and returns how many it
// processed; nil means the simulator has no console to type into.
var UsbScanCodes func(vm *VirtualMachine, spec types.UsbScanCodeSpec) (int32, types.BaseMethodFault)

// PutUsbScanCodes answers VirtualMachine.PutUsbScanCodes as vSphere does.
func (vm *VirtualMachine) PutUsbScanCodes(ctx *Context, req *types.PutUsbScanCodes) soap.HasFault {
	body := new(methods.PutUsbScanCodesBody)
	if UsbScanCodes == nil {
		body.Fault_ = Fault("no console", &types.NotSupported{})
		return body
	}
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		body.Fault_ = Fault("", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOn,
			ExistingState:  vm.Runtime.PowerState,
		})
		return body
	}
	count, fault := UsbScanCodes(vm, req.Spec)
	if fault != nil {
		body.Fault_ = Fault("", fault)
		return body
	}
	body.Res = &types.PutUsbScanCodesResponse{Returnval: count}
	return body
}
