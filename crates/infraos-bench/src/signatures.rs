//! `infraos bench signatures`: what a signature costs with each algorithm the server offers,
//! measured in one process on the same message (an audit checkpoint's body) with the server's
//! own signing code, so the ratio is the figure to quote.
//!
//! Each run times a batch of operations and takes the mean per operation; the result is the
//! median over runs. Batches are sized per algorithm so that a run lasts long enough to time
//! (SLH-DSA-128s signs in milliseconds, Ed25519 in microseconds).

use std::time::Instant;

use infraos_api::audit::checkpoint_body;
use infraos_api::signature::{Algorithm, Purpose, verify};
use infraos_server::signing::ServerKey;

/// Operations per run: (signatures, verifications).
fn batch(algorithm: Algorithm) -> (u32, u32) {
    match algorithm {
        Algorithm::Ed25519 => (2000, 2000),
        Algorithm::SlhDsaSha2_128s => (4, 200),
    }
}

struct Cost {
    sign_us: f64,
    verify_us: f64,
}

fn measure(algorithm: Algorithm, runs: usize) -> anyhow::Result<Cost> {
    let key = ServerKey::generate(algorithm)?;
    let body = checkpoint_body(1000, &[7; 32]);
    let (signs, verifies) = batch(algorithm);
    let mut sign_us = Vec::with_capacity(runs);
    let mut verify_us = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut signature = None;
        for _ in 0..signs {
            signature = Some(key.sign(Purpose::AuditCheckpoint, &body)?);
        }
        sign_us.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(signs));
        let signature = signature.ok_or_else(|| anyhow::anyhow!("no signature made"))?;
        let start = Instant::now();
        for _ in 0..verifies {
            verify(
                key.public_key(),
                Purpose::AuditCheckpoint,
                &body,
                &signature,
            )?;
        }
        verify_us.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(verifies));
    }
    Ok(Cost {
        sign_us: super::median(&mut sign_us),
        verify_us: super::median(&mut verify_us),
    })
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; quote figures from a release build");
    }
    let mut costs = Vec::new();
    for algorithm in Algorithm::ALL {
        let cost = measure(algorithm, runs)?;
        println!(
            "{algorithm}: sign {:.1} µs/op, verify {:.1} µs/op, signature {} bytes, public key {} bytes",
            cost.sign_us,
            cost.verify_us,
            algorithm.signature_len(),
            algorithm.public_key_len()
        );
        costs.push((algorithm, cost));
    }
    if let [(_, ed), (slh_name, slh)] = costs.as_slice() {
        println!("runs: {runs} (median of per-op means)");
        println!(
            "{slh_name}/ed25519: sign {:.0}x, verify {:.1}x",
            slh.sign_us / ed.sign_us,
            slh.verify_us / ed.verify_us
        );
    }
    Ok(())
}
