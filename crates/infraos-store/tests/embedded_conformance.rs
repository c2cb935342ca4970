//! The embedded backend runs the whole conformance suite, twice: with default tuning, and with
//! a tiny watch history and group size so the lag, re-sync and compaction paths are exercised.

mod default_tuning {
    infraos_store::store_conformance_tests!(infraos_store::conformance::EmbeddedHarness::new());
}

mod tiny_history {
    infraos_store::store_conformance_tests!(
        infraos_store::conformance::EmbeddedHarness::with_options(
            infraos_store::embedded::EmbeddedOptions {
                watch_history: 64,
                max_batch: 4,
                linger: std::time::Duration::ZERO,
            }
        )
    );
}
