package main

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// USB HID keyboard usage ids (HID Usage Tables, page 0x07) and what they type,
// unshifted and shifted.
var hidKeys = func() map[int32][2]byte {
	keys := map[int32][2]byte{
		0x28: {'\r', '\r'}, 0x29: {0x1b, 0x1b}, 0x2a: {0x7f, 0x7f}, 0x2b: {'\t', '\t'}, 0x2c: {' ', ' '},
		0x2d: {'-', '_'}, 0x2e: {'=', '+'}, 0x2f: {'[', '{'}, 0x30: {']', '}'}, 0x31: {'\\', '|'},
		0x33: {';', ':'}, 0x34: {'\'', '"'}, 0x35: {'`', '~'}, 0x36: {',', '<'}, 0x37: {'.', '>'},
		0x38: {'/', '?'},
	}
	for i := int32(0); i < 26; i++ {
		keys[0x04+i] = [2]byte{byte('a' + i), byte('A' + i)}
	}
	shiftedDigits := ")!@#$%^&*("
	for i := int32(0); i < 10; i++ {
		digit := byte('0' + (i+1)%10)
		keys[0x1e+i] = [2]byte{digit, shiftedDigits[(i+1)%10]}
	}
	return keys
}()

func isSet(b *bool) bool { return b != nil && *b }

// decodeKey turns one key event into the bytes a terminal receives, or nil for a key
// that types nothing (a usage id outside the table).
func decodeKey(event types.UsbScanCodeSpecKeyEvent) []byte {
	// vSphere's usbHidCode is the usage id shifted left 16 bits, ORed with 0x0007.
	usage := event.UsbHidCode >> 16
	key, ok := hidKeys[usage]
	if !ok {
		return nil
	}
	mods := event.Modifiers
	shift, control, alt := false, false, false
	if mods != nil {
		shift = isSet(mods.LeftShift) || isSet(mods.RightShift)
		control = isSet(mods.LeftControl) || isSet(mods.RightControl)
		alt = isSet(mods.LeftAlt) || isSet(mods.RightAlt)
	}
	char := key[0]
	if shift {
		char = key[1]
	}
	if control && char >= '@' && char <= '~' {
		char &= 0x1f // Ctrl-C is 0x03, and so on
	}
	if alt {
		return []byte{0x1b, char}
	}
	return []byte{char}
}

// typeScanCodes feeds decoded key events to the VM's console and returns how many
// events it processed.
func (l *lab) typeScanCodes(vm *simulator.VirtualMachine, spec types.UsbScanCodeSpec) (int32, types.BaseMethodFault) {
	g := l.guestOf(vm.Self)
	if g == nil {
		return 0, &types.NotSupported{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.qemuConsole() {
		return g.typeQemu(spec)
	}
	if g.console == nil {
		return 0, &types.InvalidState{}
	}
	var typed []byte
	for _, event := range spec.KeyEvents {
		typed = append(typed, decodeKey(event)...)
	}
	if _, err := g.console.Write(typed); err != nil {
		return 0, &types.InvalidState{}
	}
	g.logf("USB: PutUsbScanCodes: %d key events typed at the console", len(spec.KeyEvents))
	return int32(len(spec.KeyEvents)), nil
}
