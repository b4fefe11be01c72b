package ipam

import "testing"

func TestBitmapNextFree(t *testing.T) {
	cases := []struct {
		name        string
		size, start int
		set         []int
		want        int
	}{
		{"empty", 8, 0, nil, 0},
		{"start honoured", 8, 3, nil, 3},
		{"skips used", 8, 0, []int{0, 1, 2}, 3},
		{"wraps", 8, 6, []int{6, 7}, 0},
		{"full", 8, 5, []int{0, 1, 2, 3, 4, 5, 6, 7}, -1},
		{"across words", 256, 60, []int{60, 61, 62, 63, 64, 65}, 66},
		{"wraps across words", 128, 127, []int{127}, 0},
		{"single", 1, 0, nil, 0},
		{"single full", 1, 0, []int{0}, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newBitmap(c.size)
			for _, i := range c.set {
				b.set(i)
			}
			if got := b.nextFree(c.start, c.size); got != c.want {
				t.Fatalf("nextFree = %d, want %d", got, c.want)
			}
		})
	}
	full := newBitmap(65536)
	for i := range 65536 {
		full.set(i)
	}
	if got := full.nextFree(12345, 65536); got != -1 {
		t.Fatalf("full 2^16 block: nextFree = %d", got)
	}
	full.clear(100)
	if got := full.nextFree(12345, 65536); got != 100 {
		t.Fatalf("nextFree = %d, want 100", got)
	}
}
