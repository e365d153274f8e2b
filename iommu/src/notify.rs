//! Change notification: what the tables changed, queued in order while the tables are
//! locked, and delivered to subscribers afterwards, with no IOMMU lock held. A subscriber
//! may forward a change to another process and wait for its answer (a vfio-user DMA_UNMAP
//! to nicd) without stalling translation, and may itself lock the engine or the tables.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

use crate::domain::Mapping;
use crate::rid::RequesterId;
use crate::table::DomainId;

/// A change of a domain, for subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `mapping` was added to `domain`, whose endpoints are listed.
    Map {
        /// Domain.
        domain: DomainId,
        /// The new mapping.
        mapping: Mapping,
        /// Endpoints attached to the domain.
        endpoints: Vec<RequesterId>,
    },
    /// `mapping` was removed.
    Unmap {
        /// Domain.
        domain: DomainId,
        /// The removed mapping.
        mapping: Mapping,
        /// Endpoints attached to the domain.
        endpoints: Vec<RequesterId>,
    },
    /// `endpoint` was attached or detached: from now on its DMA reaches `view`, and what
    /// it reached before is gone.
    Endpoint {
        /// The endpoint.
        endpoint: RequesterId,
        /// What its DMA reaches now.
        view: EndpointView,
        /// Whether it is attached (to a domain or in bypass); if not, a later
        /// [`Change::DetachedBypass`] changes its view.
        attached: bool,
    },
    /// Whether endpoints attached nowhere bypass translation (else they are blocked).
    DetachedBypass(bool),
}

/// What an endpoint's DMA reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointView {
    /// Nothing.
    Blocked,
    /// All of guest-physical memory, untranslated.
    Bypass,
    /// The mappings of a domain (changes to it follow as Map and Unmap).
    Domain {
        /// The domain.
        domain: DomainId,
        /// Its mappings at the time of the attach.
        mappings: Vec<Mapping>,
    },
}

/// Receives every change.
pub trait ChangeSubscriber: Send + Sync {
    /// Called once per change, in the order the changes were made, on the thread that
    /// delivers them, with no IOMMU lock held. Returning acknowledges the change: a
    /// virtio-iommu request completes only after every subscriber has returned from every
    /// change it made.
    fn changed(&self, change: &Change);
}

#[derive(Default)]
struct State {
    /// Each subscriber with the number of the first change it receives.
    subscribers: Vec<(u64, Arc<dyn ChangeSubscriber>)>,
    /// Changes waiting, with their numbers.
    pending: VecDeque<(u64, Change)>,
    /// Changes pushed so far (the next one's number).
    pushed: u64,
    /// The thread delivering, while one is.
    deliverer: Option<ThreadId>,
}

/// Changes waiting for delivery, and the subscribers they go to.
///
/// The tables [`push`](Self::push) each change while they are locked; whoever made the
/// changes calls [`deliver`](Self::deliver) once the locks are released. One thread
/// delivers at a time, so subscribers see every change once, in order, whichever thread
/// made it.
#[derive(Default)]
pub struct ChangeQueue {
    state: Mutex<State>,
    /// Signalled when a delivery ends.
    idle: Condvar,
}

impl fmt::Debug for ChangeQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state();
        f.debug_struct("ChangeQueue")
            .field("subscribers", &s.subscribers.len())
            .field("pending", &s.pending.len())
            .finish_non_exhaustive()
    }
}

impl ChangeQueue {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a subscriber: it receives the changes made from now on (not those made
    /// before and still waiting for delivery), so a subscriber that reads the tables'
    /// state under their lock and subscribes under the same lock sees every later change
    /// exactly once.
    pub fn subscribe(&self, sub: Arc<dyn ChangeSubscriber>) {
        let mut s = self.state();
        let from = s.pushed;
        s.subscribers.push((from, sub));
    }

    /// Removes a subscriber (compared by pointer); it receives nothing more once a
    /// delivery under way has finished with its current change.
    pub fn unsubscribe(&self, sub: &Arc<dyn ChangeSubscriber>) {
        self.state()
            .subscribers
            .retain(|(_, s)| !Arc::ptr_eq(s, sub));
    }

    /// Queues `change`; without subscribers nothing is kept.
    pub(crate) fn push(&self, change: Change) {
        let mut s = self.state();
        let n = s.pushed;
        s.pushed += 1;
        if !s.subscribers.is_empty() {
            s.pending.push_back((n, change));
        }
    }

    /// Changes queued and not yet handed to subscribers.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Hands every queued change to every subscriber, in order, and returns when all have
    /// been acknowledged. Call it with no IOMMU lock held. While another thread delivers,
    /// this waits for it to finish (it delivers the changes queued here too). Called from
    /// within a subscriber, it returns at once: the delivery under way goes on with the
    /// changes queued meanwhile, after the current one.
    pub fn deliver(&self) {
        let me = thread::current().id();
        let mut s = self.state();
        if s.deliverer == Some(me) {
            return;
        }
        while s.deliverer.is_some() {
            s = self.idle.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.deliverer = Some(me);
        while let Some((n, change)) = s.pending.pop_front() {
            let subscribers: Vec<_> = s
                .subscribers
                .iter()
                .filter(|(from, _)| *from <= n)
                .map(|(_, sub)| sub.clone())
                .collect();
            drop(s);
            for sub in &subscribers {
                sub.changed(&change);
            }
            s = self.state();
        }
        s.deliverer = None;
        drop(s);
        self.idle.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Perm;
    use std::sync::mpsc;
    use std::time::Duration;

    fn unmap(domain: DomainId) -> Change {
        Change::Unmap {
            domain,
            mapping: Mapping {
                start: 0,
                end: 0xfff,
                phys: 0,
                perm: Perm::R,
            },
            endpoints: Vec::new(),
        }
    }

    fn domain_of(c: &Change) -> DomainId {
        match c {
            Change::Map { domain, .. } | Change::Unmap { domain, .. } => *domain,
            Change::Endpoint { .. } | Change::DetachedBypass(_) => u32::MAX,
        }
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<DomainId>>);
    impl ChangeSubscriber for Log {
        fn changed(&self, c: &Change) {
            self.0.lock().unwrap().push(domain_of(c));
        }
    }

    #[test]
    fn nothing_is_kept_without_subscribers() {
        let q = ChangeQueue::default();
        q.push(unmap(1));
        assert_eq!(q.pending(), 0);
        let log = Arc::new(Log::default());
        q.subscribe(log.clone());
        q.push(unmap(2));
        q.push(unmap(3));
        assert_eq!(q.pending(), 2);
        assert!(log.0.lock().unwrap().is_empty(), "queued, not called");
        q.deliver();
        assert_eq!(*log.0.lock().unwrap(), [2, 3]);
        assert_eq!(q.pending(), 0);
        // A late subscriber gets only what is made after it subscribed; an unsubscribed
        // one nothing more.
        q.push(unmap(4));
        let late = Arc::new(Log::default());
        q.subscribe(late.clone());
        q.push(unmap(5));
        let gone: Arc<dyn ChangeSubscriber> = log.clone();
        q.unsubscribe(&gone);
        q.deliver();
        assert_eq!(*late.0.lock().unwrap(), [5]);
        assert_eq!(*log.0.lock().unwrap(), [2, 3]);
    }

    /// Queues a follow-up change from inside the delivery of the first, and delivers
    /// again: the nested call returns at once and the follow-up comes next.
    struct Reentrant {
        queue: Mutex<Option<Arc<ChangeQueue>>>,
        log: Mutex<Vec<DomainId>>,
    }
    impl ChangeSubscriber for Reentrant {
        fn changed(&self, c: &Change) {
            let d = domain_of(c);
            self.log.lock().unwrap().push(d);
            if d == 1
                && let Some(q) = self.queue.lock().unwrap().as_ref()
            {
                q.push(unmap(10));
                q.deliver();
            }
        }
    }

    #[test]
    fn delivering_from_a_subscriber_does_not_deadlock() {
        let q = Arc::new(ChangeQueue::default());
        let sub = Arc::new(Reentrant {
            queue: Mutex::new(Some(q.clone())),
            log: Mutex::new(Vec::new()),
        });
        q.subscribe(sub.clone());
        q.push(unmap(1));
        q.push(unmap(2));
        q.deliver();
        assert_eq!(*sub.log.lock().unwrap(), [1, 2, 10]);
        sub.queue.lock().unwrap().take();
    }

    /// Blocks in `changed` until told to go on, reporting what it holds.
    struct Gate {
        entered: Mutex<mpsc::Sender<DomainId>>,
        go: Mutex<mpsc::Receiver<()>>,
        log: Mutex<Vec<DomainId>>,
    }
    impl ChangeSubscriber for Gate {
        fn changed(&self, c: &Change) {
            self.entered.lock().unwrap().send(domain_of(c)).unwrap();
            self.go.lock().unwrap().recv().unwrap();
            self.log.lock().unwrap().push(domain_of(c));
        }
    }

    #[test]
    fn a_second_deliverer_waits_and_order_holds() {
        let (entered_tx, entered) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let gate = Arc::new(Gate {
            entered: Mutex::new(entered_tx),
            go: Mutex::new(go_rx),
            log: Mutex::new(Vec::new()),
        });
        let q = Arc::new(ChangeQueue::default());
        q.subscribe(gate.clone());
        q.push(unmap(1));
        let first = {
            let q = q.clone();
            thread::spawn(move || q.deliver())
        };
        assert_eq!(
            entered.recv().unwrap(),
            1,
            "the first delivery is under way"
        );
        // Another thread queues a change and delivers: it must wait for the first.
        let (done_tx, done) = mpsc::channel();
        q.push(unmap(2));
        let second = {
            let q = q.clone();
            thread::spawn(move || {
                q.deliver();
                done_tx.send(()).unwrap();
            })
        };
        assert!(
            done.recv_timeout(Duration::from_millis(50)).is_err(),
            "returned before its change was acknowledged"
        );
        go.send(()).unwrap();
        assert_eq!(entered.recv().unwrap(), 2);
        go.send(()).unwrap();
        done.recv().unwrap();
        first.join().unwrap();
        second.join().unwrap();
        assert_eq!(*gate.log.lock().unwrap(), [1, 2]);
    }
}
