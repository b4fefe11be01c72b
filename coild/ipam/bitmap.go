package ipam

import "math/bits"

// bitmap marks the used offsets of one block.
type bitmap []uint64

func newBitmap(size int) bitmap { return make(bitmap, (size+63)/64) }

func (b bitmap) set(i int)        { b[i/64] |= 1 << (i % 64) }
func (b bitmap) clear(i int)      { b[i/64] &^= 1 << (i % 64) }
func (b bitmap) isSet(i int) bool { return b[i/64]&(1<<(i%64)) != 0 }

// nextFree returns the first clear bit at or after start, wrapping around
// once, among the first size bits; -1 when all are set.
func (b bitmap) nextFree(start, size int) int {
	for n := 0; n < size; {
		i := (start + n) % size
		w := b[i/64] >> (i % 64)
		if free := bits.TrailingZeros64(^w); free < 64-(i%64) {
			if j := i + free; j < size {
				return j
			}
			// The free bit is past the end of the block: wrap to 0.
			n += size - i
			continue
		}
		n += 64 - (i % 64)
	}
	return -1
}
