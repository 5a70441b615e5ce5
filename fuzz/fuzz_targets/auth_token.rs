#![no_main]
use libfuzzer_sys::fuzz_target;

// What a client can put where a JWT or a stream key goes: checked against a fixed JWKS, read
// as a permissions claim, and tested for the stream-key shape.
fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let _ = tidegate_auth::jwt::verify_for_fuzzing(&token);
    let _ = tidegate_auth::keys::looks_like_key(&token);
});
