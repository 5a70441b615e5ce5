#![no_main]
use libfuzzer_sys::fuzz_target;

// SRTP and SRTCP from a peer: authentication, replay and length checks on arbitrary packets,
// and protect/unprotect round trips of whatever parses as RTP.
fuzz_target!(|data: &[u8]| {
    let key = [7u8; tidegate_rtp::srtp::MASTER_LEN];
    let mut rx = tidegate_rtp::srtp::Context::new(&key);
    let _ = rx.unprotect_rtp(data);
    let _ = rx.unprotect_rtcp(data);
    let mut tx = tidegate_rtp::srtp::Context::new(&key);
    if let Ok(sealed) = tx.protect_rtp(data) {
        let mut rx = tidegate_rtp::srtp::Context::new(&key);
        assert_eq!(rx.unprotect_rtp(&sealed).ok().as_deref(), Some(data));
    }
    if let Ok(sealed) = tx.protect_rtcp(data) {
        let mut rx = tidegate_rtp::srtp::Context::new(&key);
        assert_eq!(rx.unprotect_rtcp(&sealed).ok().as_deref(), Some(data));
    }
});
