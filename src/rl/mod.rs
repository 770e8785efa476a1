//! The learning half of self-play: advantages from rewards, the clipped policy loss, and the
//! optimiser step on the model's weights.

pub mod advantage;
pub mod checkpoint;
pub mod loss;
pub mod optim;
pub mod update;
