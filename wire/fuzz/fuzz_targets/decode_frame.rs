//! Fuzz target: feed arbitrary bytes to what a Hadron receiver does with a
//! TCP byte stream (check, decode, then verify every carried event) and
//! require that nothing panics and that whatever decodes re-encodes to a
//! frame that decodes to the same thing.

#![no_main]

use hadron_wire::{LENGTH_PREFIX_BYTES, Limits, Message, check, decode, decode_event, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits so the fuzzer reaches the limit checks too.
    let limits = Limits {
        frame_bytes_max: 1 << 16,
        depth_max: 8,
        tables_max: 1024,
    };
    let mut rest = data;
    while let Ok(Some(total)) = check(rest, &limits) {
        let body = &rest[LENGTH_PREFIX_BYTES..total];
        if let Ok(frame) = decode(body, &limits) {
            for event in carried_events(&frame.message) {
                let _ = decode_event(event, &limits);
            }
            let again = encode(frame.request_id, &frame.message).expect("re-encode");
            let back = decode(&again[LENGTH_PREFIX_BYTES..], &Limits::DEFAULT).expect("re-decode");
            assert_eq!(back, frame);
        }
        rest = &rest[total..];
    }
    let _ = decode(data, &limits);
    let _ = decode_event(data, &limits);
});

fn carried_events<'a>(message: &Message<'a>) -> Vec<&'a [u8]> {
    match message {
        Message::Publish(m) => m.events.clone(),
        Message::FetchOk(m) => m.records.iter().map(|r| r.event).collect(),
        Message::Delivery(m) => vec![m.event],
        Message::StageDelivery(m) => {
            let mut all = vec![m.root];
            all.extend(m.inputs.iter().map(|i| i.event));
            all
        }
        Message::StageAck(m) => vec![m.output],
        Message::StageAcks(m) => m.acks.iter().map(|a| a.output).collect(),
        _ => Vec::new(),
    }
}
