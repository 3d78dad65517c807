//! Image garbage collection by upstream's thresholds: when the image filesystem is fuller
//! than the high threshold, unused images (no container refers to them) that are older than
//! the minimum age go, least recently used first, until usage is back at the low threshold.
//! Under disk pressure the eviction manager asks for every such image to go (`reclaim`)
//! before it evicts pods.

use crate::error::GcError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use crate::Kubelet;

/// The thresholds (upstream's defaults: 85%, 80%, 2 minutes, checked every 5 minutes).
#[derive(Clone, Debug)]
pub struct Policy {
    /// Disk use (percent) above which unused images are removed.
    pub high_percent: u8,
    /// Disk use (percent) removal brings it down to.
    pub low_percent: u8,
    /// Images younger than this stay.
    pub min_age: Duration,
    /// How often disk use is checked.
    pub period: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
            period: Duration::from_secs(300),
        }
    }
}

/// When each image was first seen, and last seen in use.
#[derive(Default)]
pub struct Seen {
    first: HashMap<String, Instant>,
    last_used: HashMap<String, Instant>,
}

/// Runs until dropped.
pub async fn run(k: Arc<Kubelet>) {
    let policy = k.config.image_gc.clone();
    loop {
        tokio::time::sleep(policy.period).await;
        let mut seen = k.images_seen.lock().await;
        if let Err(e) = collect(&k, &policy, &mut seen, false).await {
            tracing::warn!(error = %e, "image garbage collection");
        }
    }
}

/// Removes every unused image older than the minimum age, whatever the thresholds say
/// (upstream's DeleteUnusedImages, the eviction manager's reclaim for disk pressure);
/// returns how many bytes were freed.
pub async fn reclaim(k: &Kubelet) -> Result<u64, GcError> {
    let mut seen = k.images_seen.lock().await;
    collect(k, &k.config.image_gc, &mut seen, true).await
}

/// One pass (`all`: every unused image old enough, not just down to the low threshold):
/// returns how many bytes were freed.
async fn collect(k: &Kubelet, policy: &Policy, seen: &mut Seen, all: bool) -> Result<u64, GcError> {
    let now = Instant::now();
    let images = k.cri.list_images().await?;
    let containers = k.cri.containers(None).await?;
    let used: HashSet<String> = containers
        .iter()
        .flat_map(|c| {
            [
                c.image_ref.clone(),
                c.image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
            ]
        })
        .filter(|s| !s.is_empty())
        .collect();
    let in_use = |img: &cri::Image| {
        used.contains(&img.id)
            || img.repo_tags.iter().any(|t| used.contains(t))
            || img.repo_digests.iter().any(|d| used.contains(d))
    };
    for img in &images {
        seen.first.entry(img.id.clone()).or_insert(now);
        if in_use(img) {
            seen.last_used.insert(img.id.clone(), now);
        }
    }
    let present: HashSet<&String> = images.iter().map(|i| &i.id).collect();
    seen.first.retain(|id, _| present.contains(id));
    seen.last_used.retain(|id, _| present.contains(id));

    let fs = k.cri.image_fs_info().await?;
    let mount = fs
        .image_filesystems
        .first()
        .and_then(|f| f.fs_id.as_ref())
        .map(|i| i.mountpoint.clone())
        .unwrap_or_else(|| k.config.data_dir.display().to_string());
    let Some((used_bytes, total)) = crate::node::statvfs(std::path::Path::new(&mount))
        .map(|(total, avail)| (total - avail, total))
    else {
        return Err(GcError::NoFilesystem(mount.to_string()));
    };
    if !all && (total == 0 || used_bytes * 100 < total * policy.high_percent as u64) {
        return Ok(0);
    }
    let target = total * policy.low_percent as u64 / 100;
    let to_free = match all {
        true => u64::MAX,
        false => used_bytes.saturating_sub(target),
    };
    let mut candidates: Vec<&cri::Image> = images
        .iter()
        .filter(|i| !in_use(i) && !i.pinned)
        .filter(|i| {
            seen.first
                .get(&i.id)
                .is_some_and(|t| now.duration_since(*t) >= policy.min_age)
        })
        .collect();
    // Least recently used first (never used: by when first seen).
    candidates.sort_by_key(|i| seen.last_used.get(&i.id).or(seen.first.get(&i.id)).copied());
    let mut freed = 0u64;
    for img in candidates {
        if freed >= to_free {
            break;
        }
        match k.cri.remove_image(&img.id).await {
            Ok(_) => {
                freed += img.size;
                tracing::info!(image = %img.id, tags = ?img.repo_tags, bytes = img.size, "image garbage collection removed an unused image");
            }
            Err(e) => {
                tracing::warn!(image = %img.id, error = %e.message(), "removing an unused image")
            }
        }
    }
    if freed < to_free && !all {
        tracing::warn!(
            wanted = to_free,
            freed,
            "image garbage collection could not free enough space (images in use, or younger than the minimum age)"
        );
    }
    Ok(freed)
}
