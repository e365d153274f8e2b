//! Interrupts: IVAR mapping, auto clear/mask, EIMS/EICS and EITR throttling on a fake clock.

use super::*;

fn small_frame() -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x88, 0xB5]);
    f.extend_from_slice(&[0xAB; 46]);
    f
}

#[test]
fn rx_interrupt_auto_clears_auto_masks_and_is_throttled() {
    let mut h = Harness::up(policy_up(), false);
    h.advance_us(1000);
    assert_eq!(h.vf.receive(&small_frame(), false), RxOutcome::Delivered);
    assert_eq!(h.irqs(), vec![1]);
    assert_eq!(h.rd(EICR), 0, "auto-cleared (EIAC)");
    assert_eq!(h.rd(EIMS), 0b101, "auto-masked (EIAM)");
    // NAPI done: igbvf re-enables the RX vector; nothing is pending.
    h.wr(EIMS, 2);
    assert!(h.irqs().is_empty());
    // 50 us later, inside the 122 us interval (EITR 488): deferred.
    h.advance_us(50);
    h.vf.receive(&small_frame(), false);
    assert!(h.irqs().is_empty());
    assert_eq!(h.rd(EICR), 2, "cause pending");
    let deadline = h.vf.next_timer_deadline().expect("a deferred interrupt");
    assert_eq!(deadline, (1000 + 122) * 1000);
    h.advance_us(71);
    h.vf.poll_timers();
    assert!(h.irqs().is_empty(), "1 us early");
    h.advance_us(1);
    h.vf.poll_timers();
    assert_eq!(h.irqs(), vec![1]);
    assert_eq!(h.vf.next_timer_deadline(), None);
    assert_eq!(h.vf.interrupts_sent()[1], 2);
}

#[test]
fn deferred_interrupt_dropped_if_masked_meanwhile_then_fired_by_eims() {
    let mut h = Harness::up(policy_up(), false);
    h.vf.receive(&small_frame(), false);
    assert_eq!(h.irqs(), vec![1]);
    h.wr(EIMS, 2);
    h.advance_us(10);
    h.vf.receive(&small_frame(), false);
    h.wr(EIMC, 2);
    h.advance_us(200);
    h.vf.poll_timers();
    assert!(h.irqs().is_empty(), "masked at expiry");
    // The cause stays in EICR; enabling the vector fires it.
    h.wr(EIMS, 2);
    assert_eq!(h.irqs(), vec![1]);
}

#[test]
fn eics_fires_and_rearms_auto_masked_vectors() {
    let mut h = Harness::up(policy_up(), false);
    h.vf.receive(&small_frame(), false);
    assert_eq!(h.irqs(), vec![1]);
    assert_eq!(h.rd(EIMS) & 2, 0);
    h.advance_us(500);
    // The watchdog's EICS = rx eims_value.
    h.wr(EICS, 2);
    assert_eq!(h.irqs(), vec![1]);
    // Without EIAM, a masked vector stays masked and EICS only sets the cause.
    h.wr(EIAM, 0);
    h.wr(EIMC, 2);
    h.advance_us(500);
    h.wr(EICS, 2);
    assert!(h.irqs().is_empty());
    assert_eq!(h.rd(EICR), 2);
}

#[test]
fn without_eiac_eicr_stays_until_written() {
    let mut h = Harness::up(policy_up(), false);
    h.wr(EIAC, 0);
    h.vf.receive(&small_frame(), false);
    assert_eq!(h.irqs(), vec![1]);
    assert_eq!(h.rd(EICR), 2);
    assert_eq!(h.rd(EICR), 2, "not cleared on read");
    h.wr(EICR, 2);
    assert_eq!(h.rd(EICR), 0);
}

#[test]
fn ivar_maps_causes_and_invalid_entries_raise_nothing() {
    let mut h = Harness::up(policy_up(), false);
    // Swap RX and TX vectors.
    h.wr(IVAR0, 0x8180);
    h.vf.receive(&small_frame(), false);
    assert_eq!(h.irqs(), vec![0]);
    h.wr(IVAR0, 0x0001);
    h.advance_us(1000);
    h.vf.receive(&small_frame(), false);
    assert!(h.irqs().is_empty(), "valid bit clear");
    // Mailbox vector: a request's reply.
    h.wr(EIMS, 7);
    h.request(&[MSG_SET_LPE, 1522], 1);
    assert_eq!(h.irqs(), vec![2]);
}

#[test]
fn eitr_zero_means_no_throttling() {
    let mut h = Harness::up(policy_up(), false);
    h.wr(EITR0 + 4, 0);
    for _ in 0..3 {
        h.vf.receive(&small_frame(), false);
        h.wr(EIMS, 2);
    }
    assert_eq!(h.irqs(), vec![1, 1, 1]);
}
