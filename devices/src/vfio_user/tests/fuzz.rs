//! Property tests: arbitrary byte streams and fd counts never panic the decoder, the
//! socket reader or the server, and nothing decoded is larger than the bytes it came from.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use proptest::prelude::*;

use super::client::connected;
use crate::vfio_user::*;

fn some_fds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| File::open("/dev/null").unwrap().into())
        .collect()
}

/// Sizes of what a decoded message holds, to bound against its payload.
fn bounded(payload_len: usize, req: &Request) -> bool {
    match req {
        Request::RegionWrite(w) => w.data.len() <= payload_len,
        Request::SetIrqs(IrqSet {
            data: IrqData::Bool(v),
            ..
        }) => v.len() <= payload_len,
        _ => true,
    }
}

fn header_and_payload() -> impl Strategy<Value = (u16, u32, Vec<u8>)> {
    (
        prop_oneof![0u16..20, any::<u16>()],
        prop_oneof![Just(0u32), Just(1), Just(0x10), Just(0x21), any::<u32>()],
        prop::collection::vec(any::<u8>(), 0..300),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic((command, flags, payload) in header_and_payload(), nfds in 0usize..20, lie in any::<bool>()) {
        let size = if lie { payload.len() as u32 + 3 } else { 16 + payload.len() as u32 };
        let header = Header { id: 1, command, size, flags, error: 5 };
        let len = payload.len();
        let msg = Message { header, payload: payload.clone(), fds: some_fds(nfds) };
        if let Ok(req) = Request::decode(msg) {
            prop_assert!(!lie);
            prop_assert!(bounded(len, &req));
        }
        let msg = Message { header, payload, fds: some_fds(nfds) };
        if let Ok(Reply::GetRegionInfo(r)) = Reply::decode(msg) {
            prop_assert!(r.info.sparse.len() * 16 <= len);
        }
    }

    #[test]
    fn socket_reader_is_bounded_on_any_stream(stream in prop::collection::vec(any::<u8>(), 0..600), nfds in 0usize..24) {
        let (a, b) = Socket::pair().unwrap();
        let limits = Limits { max_msg_size: 256, max_fds: 4 };
        let fds = some_fds(nfds);
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        a.send_message(&stream, &borrowed).unwrap();
        drop(a);
        let mut seen = 0;
        let mut first = true;
        // Each message consumes at least 16 bytes, so this loop ends.
        loop {
            let got = b.recv_message(&limits);
            // Fds beyond the limit come with the first message: it is never delivered.
            prop_assert!(!(first && nfds > limits.max_fds && got.is_ok()));
            first = false;
            match got {
                Ok(m) => {
                    prop_assert!(m.payload.len() + 16 <= limits.max_msg_size as usize);
                    prop_assert!(m.fds.len() <= limits.max_fds);
                    seen += 16 + m.payload.len();
                    let _ = Request::decode(m);
                }
                Err(SocketError::TooManyFds { header, .. }) => {
                    prop_assert!(nfds > limits.max_fds);
                    seen += header.size as usize;
                }
                Err(e) => {
                    prop_assert!(e.is_fatal());
                    if let SocketError::TooLarge { size, .. } = e {
                        prop_assert!(size > limits.max_msg_size);
                    }
                    break;
                }
            }
            prop_assert!(seen <= stream.len());
        }
    }

    #[test]
    fn server_never_panics_and_answers_or_drops((command, flags, payload) in header_and_payload(), nfds in 0usize..18) {
        let (mut client, mut server, s) = connected();
        let size = 16 + payload.len() as u32;
        let mut bytes = Header { id: 77, command, size, flags, error: 0 }.to_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        let fds = some_fds(nfds);
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        client.send_raw(&bytes, &borrowed);
        let before = server.stats();
        server.serve_one(&s).unwrap();
        let after = server.stats();
        if client.has_pending() {
            let (h, _) = client.recv();
            prop_assert_eq!(h.id, 77);
            prop_assert!(flags & 0x10 == 0, "no reply to a no-reply message");
        } else {
            prop_assert!(flags & 0x10 != 0 || after.dropped > before.dropped);
        }
        // Still in step.
        let r = super::client::call(&mut client, &mut server, &s, &Request::DeviceReset);
        let ok = matches!(r, Reply::DeviceReset | Reply::Error { .. });
        prop_assert!(ok);
    }
}
