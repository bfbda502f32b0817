//! `compat = "huatuo"`: one switch that makes bianque look like HuaTuo to a HuaTuo site (metric
//! prefix and labels, tracer names, record fields, index template, HTTP routes). Each layer reads
//! it where its own convention differs; without it bianque keeps its own conventions.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compat {
    /// bianque's own names and fields.
    #[default]
    Bianque,
    /// HuaTuo's names, labels, record fields and routes.
    Huatuo,
}

impl Compat {
    pub fn is_huatuo(self) -> bool {
        self == Compat::Huatuo
    }
}
