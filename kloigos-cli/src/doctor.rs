//! `doctor`: checks an installation and says how to fix what is wrong.
use crate::ctx::Ctx;
use crate::error::Result;

/// `doctor`.
pub fn doctor(_ctx: &Ctx) -> Result<u8> {
    Ok(0)
}
