//! The image catalogue behind a small trait: `images list|describe|delete` work the same on the
//! local store (here) and on an S3 store (`publish::s3_catalog`).

use super::{ImageRecord, Store};

/// What `images list|describe|delete` need from a catalogue.
pub trait ImageCatalog {
    /// Where the catalogue is, for messages (`/var/lib/imsctl`, `s3://bucket/prefix`).
    fn location(&self) -> String;
    /// Every image record, oldest first (ties by id).
    fn list_images(&self) -> anyhow::Result<Vec<ImageRecord>>;
    fn get_image(&self, id: &str) -> anyhow::Result<ImageRecord>;
    /// Add a record; an existing record with the same id is an error, never replaced.
    fn insert_image(&self, record: &ImageRecord) -> anyhow::Result<()>;
    /// Delete the record, then the artifacts it owns in this catalogue. Returns the record.
    fn delete_image(&self, id: &str) -> anyhow::Result<ImageRecord>;
}

impl ImageCatalog for Store {
    fn location(&self) -> String {
        self.root().display().to_string()
    }
    fn list_images(&self) -> anyhow::Result<Vec<ImageRecord>> {
        Ok(self.list::<ImageRecord>()?)
    }
    fn get_image(&self, id: &str) -> anyhow::Result<ImageRecord> {
        Ok(self.get::<ImageRecord>(id)?)
    }
    fn insert_image(&self, record: &ImageRecord) -> anyhow::Result<()> {
        Ok(self.insert(record)?)
    }
    fn delete_image(&self, id: &str) -> anyhow::Result<ImageRecord> {
        Ok(Store::delete_image(self, id)?)
    }
}
