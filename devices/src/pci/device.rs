//! The interface every PCI function model implements.

use super::ConfigSpace;

/// A PCI function as the bus sees it.
pub trait PciDevice: Send + std::fmt::Debug {
    /// Its configuration space (the bus reads BAR addresses and enables from it).
    fn config(&self) -> &ConfigSpace;

    /// A guest config read of 1, 2 or 4 bytes at `offset` (0..4096).
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// A guest config write of 1, 2 or 4 bytes at `offset` (0..4096).
    fn config_write(&mut self, offset: usize, data: &[u8]);

    /// A read of `data.len()` bytes at `offset` in BAR `bar`.
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    /// A write at `offset` in BAR `bar`.
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}

    /// The VM is pausing: threads of the function stop touching guest memory (returns at
    /// once; see [`PciDevice::is_paused`]).
    fn pause(&mut self) {}

    /// The VM runs again.
    fn resume(&mut self) {}

    /// Whether the function holds still after [`PciDevice::pause`].
    fn is_paused(&self) -> bool {
        true
    }
}
