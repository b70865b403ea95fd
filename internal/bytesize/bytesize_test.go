package bytesize

import "testing"

func TestParse(t *testing.T) {
	for s, want := range map[string]uint64{
		"1048576": 1 << 20, "512MiB": 512 << 20, "2GiB": 2 << 30, "1.5G": 3 << 29, "2KB": 2000, " 4 MiB ": 4 << 20, "7B": 7,
	} {
		if got, err := Parse(s); err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "lots", "-1G", "0", "G"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) succeeded", s)
		}
	}
}

func TestFormat(t *testing.T) {
	for b, want := range map[uint64]string{0: "0B", 2048: "2K", 512 << 20: "512M", 3 << 29: "1.5G", 2 << 40: "2.0T"} {
		if got := Format(b); got != want {
			t.Errorf("Format(%d) = %q, want %q", b, got, want)
		}
	}
}
