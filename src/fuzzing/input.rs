//! Reading structure out of fuzz bytes: every read succeeds (zeros once the bytes run out),
//! so any input is a valid program for the structure-aware targets.

pub(super) struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub(super) fn new(data: &'a [u8]) -> Input<'a> {
        Input(data)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    pub(super) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub(super) fn u64(&mut self) -> u64 {
        (u64::from(self.u16()) << 48)
            | (u64::from(self.u16()) << 32)
            | (u64::from(self.u16()) << 16)
            | u64::from(self.u16())
    }

    pub(super) fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// One of `n` choices (`n` > 0).
    pub(super) fn choose(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n
    }

    /// Up to `n` bytes.
    pub(super) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A length (two bytes, below `max`), then that many bytes (fewer if the input ends).
    pub(super) fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u16()) % (max + 1);
        self.take(n)
    }

    /// What is left.
    pub(super) fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }
}
