"""vSphere: the vCenter connection shared by every target on it, the event watcher,
wait conditions, the wire log and VM logs."""
