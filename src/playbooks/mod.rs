//! Playbooks (issue 15): the cure Antibody chooses for an alert that names
//! no actions, matched on its source, kind and severity, with the alert's
//! entity and ids filled into the actions' parameters and repeat
//! offenders' mitigations lengthened. Pure logic and the file loader; the
//! engine asks it, then validates the filled-in actions exactly as if the
//! alert had carried them, so a playbook never reaches past the guards.
//!
//! - [`model`]: a playbook file as written and its checks;
//! - [`load`]: `playbooks.dir`, files in lexical order;
//! - [`select`]: the first match, why the others did not, filling in;
//! - [`template`]: placeholders, substituted in string values in one pass;
//! - [`escalate`]: `seconds × factor^n`, capped, with jitter.

pub mod escalate;
pub mod load;
pub mod model;
pub mod select;
pub mod template;

pub use load::{load_dir, LoadError, DEFAULT_DIR};
pub use model::Playbook;
pub use select::{choose, fill, AlertFacts, Filled};
