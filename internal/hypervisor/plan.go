package hypervisor

import (
	"slices"
	"sort"
	"strings"

	"github.com/twinsnap/twinsnap/guestagent"
)

// PlanVolume is one VM volume as the freeze planner sees it: its name
// (for messages), its serial and the guest PCI address of its device.
type PlanVolume struct {
	Name     string
	Serial   string
	PCI      *guestagent.PCIAddress
	Selected bool
}

// FreezePlan says which guest file systems to freeze for a capture of the
// selected volumes, and why.
type FreezePlan struct {
	// Mountpoints are the guest mount points to freeze, sorted.
	Mountpoints []string
	// Reasons explains each mount point in Mountpoints.
	Reasons map[string]string
	// Spanning lists mount points frozen although they also span
	// unselected volumes.
	Spanning []string
	// Unmapped lists selected volumes on which no guest file system was
	// found (raw use, unmounted, or a device the guest does not report).
	Unmapped []string
	// Unmatched lists guest file systems on disks that match no volume.
	Unmatched []string
}

// PlanFreeze maps the guest's file systems (from guest-get-fsinfo) onto
// the VM's volumes and returns the mount points to freeze for a capture of
// the selected volumes. A disk matches a volume by serial when the guest
// reports one, else by PCI address (bus 0 devices: the guest's bus numbers
// equal QEMU's only on the root bus). A file system spanning a selected
// and an unselected volume is frozen too, and the plan says why. File
// systems on no disk (tmpfs, proc) are never frozen.
func PlanFreeze(volumes []PlanVolume, fs []guestagent.FileSystem) FreezePlan {
	plan := FreezePlan{Reasons: map[string]string{}}
	covered := map[string]bool{}
	for _, f := range fs {
		if len(f.Disks) == 0 || f.Mountpoint == "" {
			continue
		}
		var sel, unsel []string
		matchedAll := true
		for _, d := range f.Disks {
			v := matchVolume(volumes, d)
			if v == nil {
				matchedAll = false
				continue
			}
			if v.Selected {
				sel = appendUnique(sel, v.Name)
				covered[v.Name] = true
			} else {
				unsel = appendUnique(unsel, v.Name)
			}
		}
		if !matchedAll && len(sel) == 0 && len(unsel) == 0 {
			plan.Unmatched = append(plan.Unmatched, f.Mountpoint)
			continue
		}
		if len(sel) == 0 {
			continue
		}
		plan.Mountpoints = append(plan.Mountpoints, f.Mountpoint)
		why := "on selected volume " + strings.Join(sel, ", ")
		if len(sel) > 1 {
			why = "spans selected volumes " + strings.Join(sel, ", ")
		}
		if len(unsel) > 0 {
			why += "; also spans unselected " + strings.Join(unsel, ", ") + ", frozen too for a consistent image"
			plan.Spanning = append(plan.Spanning, f.Mountpoint)
		}
		plan.Reasons[f.Mountpoint] = why
	}
	for _, v := range volumes {
		if v.Selected && !covered[v.Name] {
			plan.Unmapped = append(plan.Unmapped, v.Name)
		}
	}
	sort.Strings(plan.Mountpoints)
	sort.Strings(plan.Spanning)
	sort.Strings(plan.Unmapped)
	sort.Strings(plan.Unmatched)
	plan.Mountpoints = slices.Compact(plan.Mountpoints)
	return plan
}

func matchVolume(volumes []PlanVolume, d guestagent.Disk) *PlanVolume {
	if d.Serial != "" {
		for i := range volumes {
			if volumes[i].Serial != "" && volumes[i].Serial == d.Serial {
				return &volumes[i]
			}
		}
	}
	for i := range volumes {
		p := volumes[i].PCI
		if p == nil || p.Bus != 0 || d.PCIController.Bus != 0 {
			continue
		}
		if p.Domain == d.PCIController.Domain && p.Slot == d.PCIController.Slot && p.Function == d.PCIController.Function {
			return &volumes[i]
		}
	}
	return nil
}

func appendUnique(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}
