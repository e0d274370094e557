//! What the image phases ask about encryption: whether a volume wants it, whether a snapshot's
//! data is LUKS-encrypted (a snapshot of an encrypted volume), and a volume's passphrase
//! (decrypted with the configured KEK), and the size marker of failures only a new volume size
//! retries. Reads only; writes nothing.

use rbd::Passphrase;
use store::{EncryptionType, Image, Snapshot, ENCRYPTION_HEADER_SET};

use crate::ctx::{get_opt, Ctx};
use crate::Result;

/// Whether the volume asks for encryption.
pub(super) fn wants_encryption(img: &Image) -> bool {
    matches!(&img.spec.encryption, Some(e) if e.encryption_type == EncryptionType::Encrypted)
}

/// Whether the data of `snap` is LUKS-encrypted (a snapshot of an encrypted volume).
pub(super) async fn snapshot_encrypted(ctx: &Ctx, snap: &Snapshot) -> Result<bool> {
    if snap.source.volume_image_id.is_empty() {
        return Ok(false);
    }
    Ok(get_opt(&ctx.images, &snap.source.volume_image_id)
        .await?
        .is_some_and(|src| {
            src.status.encryption == ENCRYPTION_HEADER_SET || wants_encryption(&src)
        }))
}

/// The passphrase of an encrypted volume, or why it cannot be had.
pub(super) fn passphrase(ctx: &Ctx, img: &Image) -> std::result::Result<Passphrase, String> {
    let Some(kek) = &ctx.cfg.kek else {
        return Err("encrypted volume but no key-encryption key configured".into());
    };
    let stored = img
        .spec
        .encryption
        .as_ref()
        .map(|e| e.encrypted_passphrase.as_slice());
    kek.decrypt(stored.unwrap_or_default())
        .map(Passphrase::new)
        .map_err(|e| e.to_string())
}

/// End of `status.message` after an encrypted copy or a LUKS2 format failed for good: the volume
/// size it failed at (a new size retries).
pub(super) fn size_marker(size: u64) -> String {
    format!("(volume size {size})")
}
