// Package hypervisor reaches VMs through QMP (go-qemu) and libvirt
// (go-libvirt): it inspects block devices, runs QMP transactions and follows
// their jobs by job id, gives access to the guest agent, and defines,
// starts and stops VMs. The snapshot engine depends on it only through small
// interfaces that the engine declares.
package hypervisor
