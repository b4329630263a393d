//! The WebRTC signalling body (`POST /webrtc/offer`): JSON with an SDP offer, checked before any
//! peer connection exists. A typed refusal, or an offer whose SDP parses again the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = theta_gateway::webrtc::parse_offer(data) {
        assert!(offer.unmarshal().is_ok(), "an accepted offer's SDP parses");
    }
});
