//! Runnable Quiver pipelines; see the `[[example]]` targets.
