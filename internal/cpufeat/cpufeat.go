// Package cpufeat names the instruction-set extensions of this node's CPU
// that a program can detect (CPUID, as the kernel enables them) and use.
// A program picks its code paths by them as it starts (glibc's string
// functions, a JIT, a math library), so a process must not move to a node
// whose CPU lacks one it may have chosen: it would die there of SIGILL,
// or its saved vector registers would not fit. The features come from
// golang.org/x/sys/cpu, which reads CPUID and XCR0 as programs do.
package cpufeat

import (
	"reflect"
	"slices"
	"strings"

	"golang.org/x/sys/cpu"
)

// notISA are the flags of cpu.X86 that name no instructions a program
// could depend on: a node without them runs the same code.
var notISA = []string{
	"erms", // fast REP MOVSB/STOSB: a speed hint, the instructions exist everywhere
}

// Local is this node's features, sorted: lower-case names of cpu.X86's
// flags ("avx2", "avx512f", "aes"). Empty on other architectures.
func Local() []string {
	var names []string
	v := reflect.ValueOf(cpu.X86)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		name, ok := strings.CutPrefix(f.Name, "Has")
		if !ok || f.Type.Kind() != reflect.Bool || !v.Field(i).Bool() {
			continue
		}
		if name = strings.ToLower(name); !slices.Contains(notISA, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// Union is what a process may use after it ran where a is and where b is:
// both sets, sorted, each name once.
func Union(a, b []string) []string {
	u := append(slices.Clone(a), b...)
	slices.Sort(u)
	return slices.Compact(u)
}

// Missing lists the features in need that have lacks, in need's order.
func Missing(need, have []string) []string {
	var out []string
	for _, f := range need {
		if !slices.Contains(have, f) {
			out = append(out, f)
		}
	}
	return out
}
