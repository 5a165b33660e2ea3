//! The native protocol's decoders on arbitrary bytes: they must never panic,
//! and whatever decodes must encode back to something that decodes the same.
#![no_main]

use cairn_proto::wire::{Notice, Request, Response, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((frame, used))) = decode_frame(data) else {
        return;
    };
    assert!(used <= data.len());
    if let Ok((header, req)) = Request::decode(&frame) {
        let bytes = req.encode(&header).expect("a decoded request encodes");
        let (again, _) = decode_frame(&bytes).expect("own frame").expect("complete");
        assert_eq!(Request::decode(&again).expect("own request"), (header, req));
    }
    if let Ok(resp) = Response::decode(&frame) {
        let bytes = resp.encode().expect("a decoded response encodes");
        let (again, _) = decode_frame(&bytes).expect("own frame").expect("complete");
        assert_eq!(Response::decode(&again).expect("own response"), resp);
    }
    if let Ok(notice) = Notice::decode(&frame) {
        let bytes = notice.encode().expect("a decoded notice encodes");
        let (again, _) = decode_frame(&bytes).expect("own frame").expect("complete");
        assert_eq!(Notice::decode(&again).expect("own notice"), notice);
    }
});
