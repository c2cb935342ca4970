//! Object writes for handlers: `infraos_control::write` with the API's error, so a handler's
//! change can refuse with any answer (400, 403, 409) and the store's failures map as every
//! other handler's do.

use infraos_api::{Kind, Object, Time};

use crate::error::ApiError;
use crate::state::AppState;

pub use infraos_control::write::{Audit, Decision, Target};

/// [`infraos_control::write::update`], failing with an [`ApiError`].
pub async fn update<K: Kind, T>(
    state: &AppState,
    target: Target<'_>,
    missing: impl Fn() -> ApiError,
    change: impl FnMut(&mut Object<K>, Time) -> Result<Decision<T>, ApiError>,
) -> Result<T, ApiError> {
    update_at(state, target, missing, change)
        .await
        .map(|(result, _)| result)
}

/// [`infraos_control::write::update_at`], failing with an [`ApiError`].
pub async fn update_at<K: Kind, T>(
    state: &AppState,
    target: Target<'_>,
    missing: impl Fn() -> ApiError,
    change: impl FnMut(&mut Object<K>, Time) -> Result<Decision<T>, ApiError>,
) -> Result<(T, Option<u64>), ApiError> {
    infraos_control::write::update_at_with(&*state.store, &*state.clock, target, missing, change)
        .await
}
