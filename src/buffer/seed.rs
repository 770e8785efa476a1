//! Seeding a new buffer, as AZR does: the identity program `def f(a): return a` with input
//! "Hello world" for deduction and abduction, and an induction task on the same program. Seeds
//! go through the same validation as proposals, so their outputs come from the sandbox.

use super::{Buffer, BufferError, Inserted, Origin};
use crate::sandbox::Sandbox;
use crate::tasks::parse::{InputsProposal, ProgramProposal};
use crate::tasks::{validate, TaskType};

/// The identity program every run starts from.
pub const IDENTITY: &str = "def f(a):\n    return a";

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error("the seed task was rejected by the sandbox ({0}); the sandbox is not working: run `azr setup`")]
    Rejected(validate::Rejection),
}

/// Adds the seed tasks (once; a buffer that has them is left as it is). Returns how many
/// were added.
pub async fn seed(buffer: &Buffer, sandbox: &Sandbox) -> Result<usize, SeedError> {
    let mut added = 0;
    let program = ProgramProposal {
        program: IDENTITY.into(),
        input: "\"Hello world\"".into(),
    };
    for task_type in [TaskType::Deduction, TaskType::Abduction] {
        let task = validate::program_task(sandbox, task_type, &program)
            .await
            .map_err(SeedError::Rejected)?;
        added += usize::from(matches!(
            buffer.insert(&task, 0, Origin::Seed, &[])?,
            Inserted::New(_)
        ));
    }
    let inputs = InputsProposal {
        inputs: ["\"Hello world\"", "1", "[1, 2, 3]", "{'a': (1, 2)}"]
            .map(String::from)
            .to_vec(),
        message: "The function returns its argument unchanged.".into(),
    };
    let task = validate::induction_task(sandbox, IDENTITY, &inputs, 2)
        .await
        .map_err(SeedError::Rejected)?;
    added += usize::from(matches!(
        buffer.insert(&task, 0, Origin::Seed, &[])?,
        Inserted::New(_)
    ));
    Ok(added)
}
