//! The IOAPIC driven the way Linux drives it: IOREGSEL/IOWIN accesses, entries written
//! high half first, then edge and level lines, masking, EOIs and Remote IRR.
#![allow(clippy::cast_possible_truncation)] // test data

use std::sync::Mutex;

use super::*;

/// Records routes and triggers; can be told to fail.
#[derive(Debug, Default)]
struct Routes {
    routes: Mutex<Vec<(u16, u64, u32)>>,
    triggers: Mutex<Vec<u16>>,
    fail: std::sync::atomic::AtomicBool,
}

impl Routes {
    fn triggers(&self) -> Vec<u16> {
        self.triggers.lock().unwrap().clone()
    }
    fn routes(&self) -> Vec<(u16, u64, u32)> {
        self.routes.lock().unwrap().clone()
    }
}

impl MsiRoutes for Routes {
    fn set_route(&self, vector: u16, address: u64, data: u32) -> std::io::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("no routes"));
        }
        self.routes.lock().unwrap().push((vector, address, data));
        Ok(())
    }
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        self.triggers.lock().unwrap().push(vector);
        Ok(())
    }
}

fn ioapic() -> (Ioapic, Arc<Routes>) {
    let routes = Arc::new(Routes::default());
    (Ioapic::new(0, routes.clone()), routes)
}

fn write_reg(io: &mut Ioapic, index: u32, value: u32) {
    io.write(IOREGSEL, &index.to_le_bytes());
    io.write(IOWIN, &value.to_le_bytes());
}

fn read_reg(io: &mut Ioapic, index: u32) -> u32 {
    io.write(IOREGSEL, &index.to_le_bytes());
    let mut b = [0u8; 4];
    io.read(IOWIN, &mut b);
    u32::from_le_bytes(b)
}

/// Programs `pin` as Linux's ioapic_write_entry does: high half, then low half.
fn program(io: &mut Ioapic, pin: u32, entry: u64) {
    write_reg(io, reg::REDIR_BASE + 2 * pin + 1, (entry >> 32) as u32);
    write_reg(io, reg::REDIR_BASE + 2 * pin, entry as u32);
}

fn read_entry(io: &mut Ioapic, pin: u32) -> u64 {
    let lo = read_reg(io, reg::REDIR_BASE + 2 * pin);
    let hi = read_reg(io, reg::REDIR_BASE + 2 * pin + 1);
    u64::from(lo) | (u64::from(hi) << 32)
}

const EDGE_V40_CPU1: u64 = 0x40 | (1 << entry::DEST_SHIFT);
const LEVEL_V50_CPU0: u64 = 0x50 | entry::LEVEL | entry::POLARITY_LOW;

#[test]
fn identification_registers() {
    let routes = Arc::new(Routes::default());
    let mut io = Ioapic::new(2, routes);
    assert_eq!(read_reg(&mut io, reg::VERSION), 0x0017_0011);
    assert_eq!(read_reg(&mut io, reg::ID), 2 << 24);
    assert_eq!(read_reg(&mut io, reg::ARBITRATION), 2 << 24);
    write_reg(&mut io, reg::ID, 0xffff_ffff);
    assert_eq!(read_reg(&mut io, reg::ID), 0xf << 24, "only bits 24-27");
    write_reg(&mut io, reg::VERSION, 0);
    assert_eq!(read_reg(&mut io, reg::VERSION), VERSION_VALUE, "read-only");
    // IOREGSEL reads back; unknown registers read 0 and ignore writes.
    io.write(IOREGSEL, &0x7fu32.to_le_bytes());
    let mut b = [0u8; 4];
    io.read(IOREGSEL, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x7f);
    write_reg(&mut io, 0x7f, 0x1234);
    assert_eq!(read_reg(&mut io, 0x7f), 0);
    assert_eq!(read_reg(&mut io, reg::REDIR_BASE + 48), 0, "past pin 23");
}

#[test]
fn entries_reset_masked_and_keep_only_writable_bits() {
    let (mut io, routes) = ioapic();
    for pin in 0..IOAPIC_PINS as u32 {
        assert_eq!(read_entry(&mut io, pin), entry::MASKED);
    }
    // Delivery status, Remote IRR and the reserved bits 17-55 do not take writes.
    program(&mut io, 3, u64::MAX);
    assert_eq!(read_entry(&mut io, 3), entry::WRITABLE);
    // Masked programming commits no route.
    program(&mut io, 4, EDGE_V40_CPU1 | entry::MASKED);
    assert!(routes.routes().is_empty());
    assert_eq!(read_entry(&mut io, 4), EDGE_V40_CPU1 | entry::MASKED);
}

#[test]
fn msi_encoding() {
    // Fixed, physical destination 1, edge.
    assert_eq!(entry_to_msi(EDGE_V40_CPU1), (0xfee0_1000, 0x4040));
    // Lowest priority, logical destination 0xff, level.
    let e = 0x31 | (1 << 8) | entry::DEST_LOGICAL | entry::LEVEL | (0xff << entry::DEST_SHIFT);
    assert_eq!(entry_to_msi(e), (0xfeef_f00c, 0xc131));
    // NMI keeps its delivery mode.
    assert_eq!(entry_to_msi(4 << 8).1, 0x4400);
}

#[test]
fn edge_pins_deliver_on_rising_edges_only_while_unmasked() {
    let (mut io, routes) = ioapic();
    // Masked: the edge is lost and counted.
    io.pulse(4);
    assert!(routes.triggers().is_empty());
    assert_eq!(io.stats().masked_edges, 1);
    program(&mut io, 4, EDGE_V40_CPU1);
    assert!(routes.triggers().is_empty(), "a lost edge stays lost");
    assert_eq!(routes.routes(), vec![(4, 0xfee0_1000, 0x4040)]);
    io.pulse(4);
    io.pulse(4);
    assert_eq!(routes.triggers(), vec![4, 4]);
    // Holding the line high is one edge.
    io.set_level(4, true);
    io.set_level(4, true);
    io.set_level(4, false);
    assert_eq!(routes.triggers().len(), 3);
    // Edge pins ignore EOIs and never set Remote IRR.
    io.end_of_interrupt(0x40);
    assert_eq!(read_entry(&mut io, 4) & entry::REMOTE_IRR, 0);
    assert_eq!(routes.triggers().len(), 3);
    // The route is committed once, not per interrupt.
    assert_eq!(routes.routes().len(), 1);
    assert_eq!(io.stats().delivered, 3);
}

#[test]
fn level_pins_hold_remote_irr_until_eoi() {
    let (mut io, routes) = ioapic();
    program(&mut io, 9, LEVEL_V50_CPU0);
    assert_eq!(routes.routes(), vec![(9, 0xfee0_0000, 0xc050)]);
    io.set_level(9, true);
    assert_eq!(routes.triggers(), vec![9]);
    assert_ne!(read_entry(&mut io, 9) & entry::REMOTE_IRR, 0);
    // Still asserted and in service: nothing more until the EOI.
    io.set_level(9, true);
    assert_eq!(routes.triggers().len(), 1);
    // An EOI of another vector changes nothing.
    io.end_of_interrupt(0x51);
    assert_ne!(read_entry(&mut io, 9) & entry::REMOTE_IRR, 0);
    // EOI with the line still asserted: delivered again.
    io.end_of_interrupt(0x50);
    assert_eq!(routes.triggers(), vec![9, 9]);
    assert_ne!(read_entry(&mut io, 9) & entry::REMOTE_IRR, 0);
    // The device lowers the line; the EOI clears Remote IRR and nothing more comes.
    io.set_level(9, false);
    io.end_of_interrupt(0x50);
    assert_eq!(read_entry(&mut io, 9) & entry::REMOTE_IRR, 0);
    assert_eq!(routes.triggers().len(), 2);
}

#[test]
fn unmasking_an_asserted_level_pin_delivers() {
    let (mut io, routes) = ioapic();
    program(&mut io, 10, LEVEL_V50_CPU0 | entry::MASKED);
    io.set_level(10, true);
    assert!(routes.triggers().is_empty());
    assert_eq!(io.stats().masked_edges, 0, "a level pin loses nothing");
    program(&mut io, 10, LEVEL_V50_CPU0);
    assert_eq!(routes.triggers(), vec![10]);
    // Masking keeps Remote IRR; an EOI while masked clears it without delivering.
    write_reg(
        &mut io,
        reg::REDIR_BASE + 20,
        (LEVEL_V50_CPU0 | entry::MASKED) as u32,
    );
    assert_ne!(read_entry(&mut io, 10) & entry::REMOTE_IRR, 0);
    io.end_of_interrupt(0x50);
    assert_eq!(routes.triggers().len(), 1);
    program(&mut io, 10, LEVEL_V50_CPU0);
    assert_eq!(routes.triggers().len(), 2, "still asserted once unmasked");
}

#[test]
fn switching_to_edge_clears_remote_irr() {
    let (mut io, routes) = ioapic();
    program(&mut io, 11, LEVEL_V50_CPU0);
    io.set_level(11, true);
    assert_ne!(read_entry(&mut io, 11) & entry::REMOTE_IRR, 0);
    // Linux's way to clear a stuck Remote IRR: edge, then level again.
    write_reg(
        &mut io,
        reg::REDIR_BASE + 22,
        (LEVEL_V50_CPU0 & !entry::LEVEL) as u32,
    );
    assert_eq!(read_entry(&mut io, 11) & entry::REMOTE_IRR, 0);
    io.set_level(11, false);
    write_reg(&mut io, reg::REDIR_BASE + 22, LEVEL_V50_CPU0 as u32);
    assert_eq!(routes.triggers(), vec![11]);
    io.set_level(11, true);
    assert_eq!(routes.triggers(), vec![11, 11]);
}

#[test]
fn route_changes_follow_the_entry() {
    let (mut io, routes) = ioapic();
    program(&mut io, 4, EDGE_V40_CPU1);
    program(&mut io, 4, EDGE_V40_CPU1);
    assert_eq!(routes.routes().len(), 1, "unchanged entries commit nothing");
    program(&mut io, 4, 0x41);
    io.pulse(4);
    assert_eq!(
        routes.routes(),
        vec![
            (4, 0xfee0_1000, 0x4040),
            // The high half (destination 0) lands first, then the new vector.
            (4, 0xfee0_0000, 0x4040),
            (4, 0xfee0_0000, 0x4041),
        ]
    );
}

#[test]
fn failed_routes_are_counted_not_fatal() {
    let (mut io, routes) = ioapic();
    routes.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    program(&mut io, 4, EDGE_V40_CPU1);
    io.pulse(4);
    assert!(routes.triggers().is_empty());
    assert_eq!(io.stats().failed, 1);
    routes
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    io.pulse(4);
    assert_eq!(routes.triggers(), vec![4]);
}

#[test]
fn odd_accesses_are_harmless() {
    let (mut io, routes) = ioapic();
    // Byte and quad writes, unknown offsets, pins out of range: nothing changes.
    io.write(IOREGSEL, &[0x10]);
    io.write(IOWIN, &[0u8; 8]);
    io.write(0x20, &0u32.to_le_bytes());
    io.set_level(24, true);
    io.set_level(usize::MAX, true);
    let mut q = [0xaau8; 8];
    io.read(0x20, &mut q);
    assert_eq!(q, [0; 8]);
    io.read(IOREGSEL, &mut q);
    assert_eq!(q, [0; 8], "IOREGSEL untouched by the byte write");
    assert_eq!(read_entry(&mut io, 0), entry::MASKED);
    assert!(routes.routes().is_empty() && routes.triggers().is_empty());
}

#[test]
fn state_round_trips() {
    let (mut io, _) = ioapic();
    program(&mut io, 9, LEVEL_V50_CPU0);
    io.set_level(9, true);
    let state = io.state();
    let routes = Arc::new(Routes::default());
    let mut again = Ioapic::from_state(state, routes.clone());
    assert_eq!(again.state(), state);
    // Remote IRR came along: the EOI redelivers the still-asserted line, through a
    // route committed afresh.
    again.end_of_interrupt(0x50);
    assert_eq!(routes.triggers(), vec![9]);
    assert_eq!(routes.routes(), vec![(9, 0xfee0_0000, 0xc050)]);
}

#[test]
fn ioapic_line_pulses_its_pin() {
    let routes = Arc::new(Routes::default());
    let io = Arc::new(std::sync::Mutex::new(Ioapic::new(0, routes.clone())));
    program(&mut io.lock().unwrap(), 4, EDGE_V40_CPU1);
    let line = IoapicLine::new(io.clone(), 4);
    line.trigger().unwrap();
    line.trigger().unwrap();
    assert_eq!(routes.triggers(), vec![4, 4]);
    assert_eq!(io.lock().unwrap().state().asserted, 0);
}
