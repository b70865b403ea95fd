package sim

import "testing"

// BenchmarkStudy runs 100 scenarios of the published model under every
// policy, on one worker so that a CPU profile reads plainly.
func BenchmarkStudy(b *testing.B) {
	for b.Loop() {
		if _, err := RunStudy(StudyConfig{Runs: 100, Seed: 1, Workers: 1}); err != nil {
			b.Fatal(err)
		}
	}
}
