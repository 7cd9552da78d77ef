package main

import (
	"crypto/rand"
	"encoding/base64"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// authManager is the lab's GuestAuthManager (vSphere API 5.0): credentials are checked
// as every guest operation checks them (power state, tools, then the login), and
// AcquireCredentialsInGuest hands out a TicketedSessionAuthentication that later guest
// operations accept in place of the password until ReleaseCredentialsInGuest.
type authManager struct {
	mo.GuestAuthManager
	lab *lab
}

var guestAuthManager = types.ManagedObjectReference{Type: "GuestAuthManager", Value: "guestOperationsAuthManager"}

// guestTickets are the tickets handed out, per VM; a ticket names the login it stands for.
var guestTickets = struct {
	sync.Mutex
	byVM map[types.ManagedObjectReference]map[string]string
}{byVM: map[types.ManagedObjectReference]map[string]string{}}

// installAuthManager puts the lab's GuestAuthManager beside the process and file
// managers and names it in GuestOperationsManager.authManager, as vCenter does.
func (l *lab) installAuthManager(manager *simulator.GuestOperationsManager) {
	auth := &authManager{lab: l}
	auth.Self = guestAuthManager
	manager.AuthManager = &auth.Self
	simulator.Map.Put(auth)
}

// ticketLogin is the login a ticket stands for on vm, if it was handed out and not released.
func ticketLogin(vm types.ManagedObjectReference, ticket string) (string, bool) {
	guestTickets.Lock()
	defer guestTickets.Unlock()
	user, ok := guestTickets.byVM[vm][ticket]
	return user, ok
}

// ValidateCredentialsInGuest answers nothing when the credentials would do for a guest
// operation, and the fault that operation would get otherwise.
func (m *authManager) ValidateCredentialsInGuest(req *types.ValidateCredentialsInGuest) soap.HasFault {
	body := new(methods.ValidateCredentialsInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(*guest) (*types.ValidateCredentialsInGuestResponse, *soap.Fault) {
		return new(types.ValidateCredentialsInGuestResponse), nil
	})
	return body
}

// AcquireCredentialsInGuest trades a name and password the guest accepts for a ticket.
// The lab's guests know no other kind (SSPI, SAML tokens): InvalidGuestLogin, from the
// credential check; a ticket given in turn gets OperationNotSupportedByGuest.
func (m *authManager) AcquireCredentialsInGuest(req *types.AcquireCredentialsInGuest) soap.HasFault {
	body := new(methods.AcquireCredentialsInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.RequestedAuth, func(g *guest) (*types.AcquireCredentialsInGuestResponse, *soap.Fault) {
		if _, ok := req.RequestedAuth.(*types.NamePasswordAuthentication); !ok {
			return nil, simulator.Fault("", &types.OperationNotSupportedByGuest{})
		}
		raw := make([]byte, 32)
		_, _ = rand.Read(raw)
		ticket := base64.StdEncoding.EncodeToString(raw)
		guestTickets.Lock()
		if guestTickets.byVM[req.Vm] == nil {
			guestTickets.byVM[req.Vm] = map[string]string{}
		}
		guestTickets.byVM[req.Vm][ticket] = g.cfg.GuestUsername
		guestTickets.Unlock()
		g.logf("GuestOps: AcquireCredentialsInGuest for %s: ticket issued", g.cfg.GuestUsername)
		return &types.AcquireCredentialsInGuestResponse{Returnval: &types.TicketedSessionAuthentication{Ticket: ticket}}, nil
	})
	return body
}

// ReleaseCredentialsInGuest forgets a ticket; it is refused from then on (InvalidGuestLogin).
func (m *authManager) ReleaseCredentialsInGuest(req *types.ReleaseCredentialsInGuest) soap.HasFault {
	body := new(methods.ReleaseCredentialsInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.ReleaseCredentialsInGuestResponse, *soap.Fault) {
		if ticket, ok := req.Auth.(*types.TicketedSessionAuthentication); ok {
			guestTickets.Lock()
			delete(guestTickets.byVM[req.Vm], ticket.Ticket)
			guestTickets.Unlock()
		}
		return new(types.ReleaseCredentialsInGuestResponse), nil
	})
	return body
}
