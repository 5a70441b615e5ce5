#![no_main]
use libfuzzer_sys::fuzz_target;

// A compound RTCP packet from a reader: report blocks out, or an error; never a panic, and
// never more blocks than the input has room for.
fuzz_target!(|data: &[u8]| {
    if let Ok(blocks) = tidegate_rtp::rtcp::report_blocks(data) {
        assert!(blocks.len() * 24 <= data.len());
    }
    // A publisher's or camera's sender report (useAbsoluteTimestamp): read, or none.
    if let Some(sr) = tidegate_rtp::rtcp::sender_info(data) {
        let _ = tidegate_rtp::rtcp::ntp_time(sr.ntp);
    }
});
