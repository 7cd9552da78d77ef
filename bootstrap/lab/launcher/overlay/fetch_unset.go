// Added to govmomi's simulator package at build time (go build -overlay): in version
// 0.24, Fetch of a property that is unset (vm.snapshot of a VM without snapshots,
// vm.environmentBrowser) indexes an empty MissingSet and panics, which drops the
// client's connection. vCenter answers such a Fetch with no value, which pyvmomi reads
// as None. The request types live in an internal package, hence the overlay.

package simulator

import (
	"github.com/vmware/govmomi/simulator/internal"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// UnsetFetchCollector is the PropertyCollector singleton with vCenter's answer to a
// Fetch of an unset property. Registered in place of the simulator's own, it is also
// the type each session's copy of the singleton is made from.
type UnsetFetchCollector struct {
	PropertyCollector
}

// InstallUnsetFetchCollector registers an UnsetFetchCollector as the singleton; call it
// before the first session logs in.
func InstallUnsetFetchCollector() {
	pc := new(UnsetFetchCollector)
	pc.Self = Map.content().PropertyCollector
	Map.Put(pc)
}

// Fetch answers an unset property with no value and leaves the rest to the simulator.
func (pc *UnsetFetchCollector) Fetch(ctx *Context, req *internal.Fetch) soap.HasFault {
	if req.Prop != "" && ctx.Map.Get(req.This) != nil {
		res := pc.RetrievePropertiesEx(ctx, &types.RetrievePropertiesEx{
			SpecSet: []types.PropertyFilterSpec{{
				PropSet:   []types.PropertySpec{{Type: req.This.Type, PathSet: []string{req.Prop}}},
				ObjectSet: []types.ObjectSpec{{Obj: req.This}},
			}},
		})
		if res.Fault() == nil {
			found := res.(*methods.RetrievePropertiesExBody).Res.Returnval
			if found != nil && len(found.Objects) == 1 && len(found.Objects[0].PropSet) == 0 && len(found.Objects[0].MissingSet) == 0 {
				return &internal.FetchBody{Res: &internal.FetchResponse{}}
			}
		}
	}
	return pc.PropertyCollector.Fetch(ctx, req)
}
