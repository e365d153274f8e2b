//! Attach/detach, translation and faults, notifications, and a property test against a
//! page-granular reference model.
#![allow(clippy::cast_possible_truncation)] // test data

use super::*;
use std::collections::HashMap;
use std::sync::Mutex;

fn rid(dev: u8) -> RequesterId {
    RequesterId::new(0, 1, dev, 0).unwrap()
}

#[derive(Default)]
struct Log(Mutex<Vec<Change>>);
impl ChangeSubscriber for Log {
    fn changed(&self, c: &Change) {
        self.0.lock().unwrap().push(c.clone());
    }
}

#[test]
fn attach_translate_fault() {
    let mut t = IommuTable::default();
    let a = rid(1);
    assert_eq!(
        t.translate(a, 0x1000, 4, Perm::R).unwrap_err().reason,
        FaultReason::Domain,
        "detached endpoints are blocked"
    );
    t.attach(a, 7, false).unwrap();
    t.map(7, 0x1000, 0x1fff, 0x10_0000, Perm::R).unwrap();
    t.map(7, 0x2000, 0x2fff, 0x10_1000, Perm::RW).unwrap();
    t.map(7, 0x3000, 0x3fff, 0x50_0000, Perm::RW).unwrap();
    // Across three mappings: the first two are physically contiguous and merge.
    let segs = t.translate(a, 0x1ff0, 0x2010, Perm::R).unwrap();
    assert_eq!(
        segs,
        vec![
            Segment {
                phys: 0x10_0ff0,
                len: 0x1010
            },
            Segment {
                phys: 0x50_0000,
                len: 0x1000
            },
        ]
    );
    // A write into the read-only mapping faults at its first byte.
    let f = t.translate(a, 0x1ff0, 0x20, Perm::W).unwrap_err();
    assert_eq!(
        (f.reason, f.address, f.endpoint),
        (FaultReason::Mapping, 0x1ff0, a)
    );
    // A hole faults where it starts.
    let f = t.translate(a, 0x3ff0, 0x20, Perm::R).unwrap_err();
    assert_eq!(f.address, 0x4000);
    assert!(
        t.translate(a, u64::MAX, 2, Perm::R).is_err(),
        "wrapping access"
    );
    assert_eq!(t.translate(a, 0x1000, 0, Perm::R).unwrap(), vec![]);
    // Another endpoint sees nothing of domain 7.
    assert!(t.translate(rid(2), 0x1000, 4, Perm::R).is_err());
    // Bypass.
    t.attach(rid(2), 0, true).unwrap();
    assert_eq!(
        t.translate(rid(2), 0xabc, 4, Perm::W).unwrap(),
        vec![Segment {
            phys: 0xabc,
            len: 4
        }]
    );
    t.set_bypass(true);
    assert_eq!(t.translate(rid(3), 0x10, 1, Perm::R).unwrap().len(), 1);
}

#[test]
fn endpoints_move_and_domains_die() {
    let log = Arc::new(Log::default());
    let mut t = IommuTable::new(false, (1, 100));
    t.subscribe(log.clone());
    assert_eq!(t.attach(rid(1), 0, false), Err(TableError::DomainRange(0)));
    t.attach(rid(1), 1, false).unwrap();
    t.attach(rid(2), 1, false).unwrap();
    t.map(1, 0, 0xfff, 0x1000, Perm::RW).unwrap();
    assert!(log.0.lock().unwrap().is_empty(), "queued, not delivered");
    t.changes().deliver();
    let attached = |dev| Change::Endpoint {
        endpoint: rid(dev),
        view: EndpointView::Domain {
            domain: 1,
            mappings: vec![],
        },
        attached: true,
    };
    assert_eq!(log.0.lock().unwrap()[..2], [attached(1), attached(2)]);
    assert_eq!(
        log.0.lock().unwrap()[2],
        Change::Map {
            domain: 1,
            mapping: Mapping {
                start: 0,
                end: 0xfff,
                phys: 0x1000,
                perm: Perm::RW
            },
            endpoints: vec![rid(1), rid(2)],
        }
    );
    // Moving one endpoint keeps the domain; moving the last destroys it with its maps.
    t.attach(rid(1), 2, false).unwrap();
    assert!(t.domain(1).is_some());
    assert_eq!(t.detach(rid(1), 1), Err(TableError::NotAttached(rid(1), 1)));
    t.detach(rid(2), 1).unwrap();
    assert!(t.domain(1).is_none());
    t.changes().deliver();
    let log = std::mem::take(&mut *log.0.lock().unwrap());
    assert!(
        matches!(
            &log[..],
            [
                _,
                _,
                _,
                Change::Endpoint {
                    view: EndpointView::Domain { domain: 2, .. },
                    ..
                },
                Change::Endpoint {
                    view: EndpointView::Blocked,
                    ..
                },
                Change::Unmap { domain: 1, .. },
            ]
        ),
        "{log:?}"
    );
    // An endpoint joining a domain with mappings is told them; bypass changes are told.
    let log2 = Arc::new(Log::default());
    t.subscribe(log2.clone());
    t.map(2, 0x5000, 0x5fff, 0x9000, Perm::R).unwrap();
    t.attach(rid(3), 2, false).unwrap();
    t.set_bypass(true);
    t.set_bypass(true);
    t.changes().deliver();
    let tail = std::mem::take(&mut *log2.0.lock().unwrap());
    assert!(
        matches!(
            &tail[..],
            [
                Change::Map { domain: 2, .. },
                Change::Endpoint { view: EndpointView::Domain { domain: 2, mappings }, .. },
                Change::DetachedBypass(true),
            ] if mappings.len() == 1
        ),
        "the attach carries the domain's mappings, a bypass change is told once: {tail:?}"
    );
    assert_eq!(
        t.view(rid(3)),
        EndpointView::Domain {
            domain: 2,
            mappings: vec![Mapping {
                start: 0x5000,
                end: 0x5fff,
                phys: 0x9000,
                perm: Perm::R
            }]
        }
    );
    assert_eq!(t.view(rid(9)), EndpointView::Bypass, "detached, bypass on");
    t.detach(rid(3), 2).unwrap();
    t.changes().deliver();
    assert_eq!(
        log2.0.lock().unwrap().first(),
        Some(&Change::Endpoint {
            endpoint: rid(3),
            view: EndpointView::Bypass,
            attached: false,
        })
    );
    assert_eq!(t.map(1, 0, 1, 0, Perm::R), Err(TableError::NoDomain(1)));
    assert_eq!(t.endpoint(rid(1)), EndpointState::Domain(2));
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random maps, unmaps and translations over a 64-page space, checked against a
/// page-granular model: page -> (phys page, perm, id of the mapping it belongs to).
#[test]
fn random_sequences_match_a_reference_model() {
    const PAGE: u64 = 0x1000;
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut t = IommuTable::default();
        let ep = rid(1);
        t.attach(ep, 1, false).unwrap();
        let mut model: HashMap<u64, (u64, Perm, u64)> = HashMap::new();
        let mut next_id = 0u64;
        for _ in 0..400 {
            match rng.below(3) {
                0 => {
                    let start = rng.below(64);
                    let pages = 1 + rng.below(8);
                    let end = (start + pages - 1).min(63);
                    let phys = rng.below(1 << 20) * PAGE;
                    let perm = [Perm::R, Perm::W, Perm::RW][rng.below(3) as usize];
                    let free = (start..=end).all(|p| !model.contains_key(&p));
                    let r = t.map(1, start * PAGE, end * PAGE + PAGE - 1, phys, perm);
                    assert_eq!(r.is_ok(), free, "seed {seed}: map {start}..={end}");
                    if free {
                        for p in start..=end {
                            model.insert(p, (phys / PAGE + p - start, perm, next_id));
                        }
                        next_id += 1;
                    }
                }
                1 => {
                    let start = rng.below(64);
                    let end = (start + rng.below(16)).min(63);
                    // Legal iff every mapping touching the range lies inside it.
                    let ids: Vec<u64> = (start..=end)
                        .filter_map(|p| model.get(&p).map(|e| e.2))
                        .collect();
                    let whole = ids.iter().all(|id| {
                        model
                            .iter()
                            .filter(|(_, e)| e.2 == *id)
                            .all(|(p, _)| (start..=end).contains(p))
                    });
                    let r = t.unmap(1, start * PAGE, end * PAGE + PAGE - 1);
                    assert_eq!(r.is_ok(), whole, "seed {seed}: unmap {start}..={end}");
                    if whole {
                        model.retain(|p, _| !(start..=end).contains(p));
                    }
                }
                _ => {
                    let at = rng.below(64 * PAGE);
                    let len = 1 + rng.below(3 * PAGE);
                    let access = [Perm::R, Perm::W][rng.below(2) as usize];
                    let got = t.translate(ep, at, len, access);
                    // Model: walk byte ranges page by page.
                    let mut want: Result<Vec<(u64, u64)>, u64> = Ok(Vec::new());
                    let mut a = at;
                    let last = at + len - 1;
                    while a <= last {
                        let page = a / PAGE;
                        match model.get(&page) {
                            Some((pp, perm, _)) if page < 64 && perm.allows(access) => {
                                let seg_last = (page * PAGE + PAGE - 1).min(last);
                                let phys = pp * PAGE + (a - page * PAGE);
                                if let Ok(v) = &mut want {
                                    match v.last_mut() {
                                        Some(prev) if prev.0 + prev.1 == phys => {
                                            prev.1 += seg_last - a + 1
                                        }
                                        _ => v.push((phys, seg_last - a + 1)),
                                    }
                                }
                                a = seg_last + 1;
                            }
                            _ => {
                                want = Err(a);
                                break;
                            }
                        }
                    }
                    match (got, want) {
                        (Ok(segs), Ok(w)) => {
                            let segs: Vec<(u64, u64)> =
                                segs.iter().map(|s| (s.phys, s.len)).collect();
                            assert_eq!(segs, w, "seed {seed}: translate {at:#x}+{len:#x}");
                        }
                        (Err(f), Err(addr)) => assert_eq!(f.address, addr, "seed {seed}"),
                        (g, w) => panic!("seed {seed}: translate {at:#x}+{len:#x}: {g:?} vs {w:?}"),
                    }
                }
            }
        }
    }
}

#[test]
fn lookup_and_generation() {
    let mut t = IommuTable::default();
    let a = rid(1);
    assert_eq!(
        t.lookup(a, 0, Perm::R).unwrap_err().reason,
        FaultReason::Domain
    );
    t.attach(a, 1, false).unwrap();
    let after_attach = t.generation();
    t.map(1, 0x1000, 0x1fff, 0x9000, Perm::R).unwrap();
    assert_eq!(t.generation(), after_attach, "maps do not invalidate");
    assert_eq!(t.lookup(a, 0x1800, Perm::R).unwrap().unwrap().phys, 0x9000);
    assert!(t.lookup(a, 0x1800, Perm::W).is_err());
    t.unmap(1, 0, u64::MAX).unwrap();
    assert!(t.generation() > after_attach);
    t.attach(a, 0, true).unwrap();
    assert_eq!(t.lookup(a, 0x1234, Perm::W), Ok(None), "bypass");
}

/// Every change that can withdraw a translation moves the generation, through the shared
/// tables too (where it is read without the lock); refused requests and maps do not.
#[test]
fn generation_moves_when_translations_may_go() {
    let shared = SharedTable::new(IommuTable::default());
    let g = || Translate::generation(&shared);
    let moved = |before: u64, what: &str| {
        assert!(g() > before, "{what} must move the generation");
        g()
    };
    let mut now = g();
    shared.write().attach(rid(1), 1, false).unwrap();
    now = moved(now, "attach");
    shared.write().attach(rid(2), 1, false).unwrap();
    now = moved(now, "a second attach");
    shared.write().map(1, 0, 0xfff, 0x1000, Perm::RW).unwrap();
    assert_eq!(g(), now, "map");
    assert!(shared.write().unmap(1, 0, 0x7ff).is_err());
    assert_eq!(g(), now, "a refused unmap");
    shared.write().unmap(1, 0, 0xfff).unwrap();
    now = moved(now, "unmap");
    shared.write().map(1, 0, 0xfff, 0x1000, Perm::RW).unwrap();
    shared.write().attach(rid(1), 2, false).unwrap();
    now = moved(now, "attach elsewhere");
    shared.write().detach(rid(2), 1).unwrap();
    now = moved(now, "detach");
    assert!(shared.write().detach(rid(2), 1).is_err());
    assert_eq!(g(), now, "a refused detach");
    shared.write().set_bypass(true);
    moved(now, "bypass change");
    assert_eq!(
        shared.translate(rid(3), 0x10, 4, Perm::R),
        Ok(vec![Segment { phys: 0x10, len: 4 }])
    );
}
