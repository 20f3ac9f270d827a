//! K-means for one k (linfa: k-means++ initialisation, seeded, several restarts, the best by inertia kept), and the
//! mean silhouette of several clusterings at once, on all customers or on a seeded sample of them.

use std::num::NonZeroUsize;

use linfa::DatasetBase;
use linfa::prelude::*;
use linfa_clustering::{KMeans, KMeansInit};
use ndarray::Array2;
use rand::SeedableRng;
use rand::seq::index;
use rand_chacha::ChaCha8Rng;
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng as _;

use crate::failure::ToolFailure;

/// Lloyd iterations per run at most; runs on these data converge in a few dozen.
const MAX_ITERATIONS: u64 = 300;
/// A run stops when no centroid moves further than this (in standard deviations).
const TOLERANCE: f64 = 1e-4;

/// One clustering: each customer's cluster (0..k) and the sum of squared distances to the cluster means.
#[derive(Clone, Debug)]
pub struct Clustering {
    pub k: usize,
    pub labels: Vec<usize>,
    pub inertia: f64,
}

/// K-means of the rows of `z` into `k` clusters: k-means++ initialisation from `seed`, `restarts` runs, the run
/// with the lowest inertia kept.
pub fn kmeans(z: &Array2<f64>, k: usize, seed: u64, restarts: usize) -> Result<Clustering, ToolFailure> {
    // The stream depends on k too, so a range of k does not reuse one sequence of first centroids.
    let rng = Xoshiro256Plus::seed_from_u64(seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let dataset = DatasetBase::from(z.clone());
    let model = KMeans::params_with_rng(k, rng)
        .init_method(KMeansInit::KMeansPlusPlus)
        .n_runs(restarts.max(1))
        .max_n_iterations(MAX_ITERATIONS)
        .tolerance(TOLERANCE)
        .fit(&dataset)
        .map_err(|e| ToolFailure::Fatal(anyhow::anyhow!("k-means with k = {k} failed: {e}")))?;
    let labels: Vec<usize> = model.predict(z).to_vec();
    let inertia = inertia(z, &labels, k);
    Ok(Clustering { k, labels, inertia })
}

/// The sum of squared distances from each row to the mean of its cluster.
pub fn inertia(z: &Array2<f64>, labels: &[usize], k: usize) -> f64 {
    let d = z.ncols();
    let mut sums = vec![0.0; k * d];
    let mut counts = vec![0usize; k];
    for (row, &label) in z.rows().into_iter().zip(labels) {
        counts[label] += 1;
        for (sum, value) in sums[label * d..(label + 1) * d].iter_mut().zip(row) {
            *sum += value;
        }
    }
    z.rows()
        .into_iter()
        .zip(labels)
        .map(|(row, &label)| {
            let n = counts[label].max(1) as f64;
            row.iter().zip(&sums[label * d..(label + 1) * d]).map(|(v, s)| (v - s / n).powi(2)).sum::<f64>()
        })
        .sum()
}

/// The rows the silhouette is computed on: all of them up to `size`, else `size` of them drawn with `seed`,
/// ascending.
pub fn silhouette_sample(n: usize, size: usize, seed: u64) -> Vec<usize> {
    if n <= size {
        return (0..n).collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = index::sample(&mut rng, n, size).into_vec();
    rows.sort_unstable();
    rows
}

/// The mean silhouette of each clustering over the `sample` rows, with distances among the sample only (as
/// scikit-learn's `silhouette_score(sample_size=...)`). A row alone in its cluster scores 0.
///
/// Every pair's distance is computed once and serves every clustering, so a range of k costs one pass over the
/// pairs: quadratic in the sample, spread over the available cores.
pub fn mean_silhouettes(z: &Array2<f64>, sample: &[usize], clusterings: &[&Clustering]) -> Vec<f64> {
    let m = sample.len();
    if m < 2 || clusterings.is_empty() {
        return vec![0.0; clusterings.len()];
    }
    let d = z.ncols();
    // The sample's rows, contiguous, and each clustering's labels of them.
    let points: Vec<f64> = sample.iter().flat_map(|&i| z.row(i).to_vec()).collect();
    let offsets: Vec<usize> = clusterings
        .iter()
        .scan(0, |offset, c| {
            let start = *offset;
            *offset += c.k;
            Some(start)
        })
        .collect();
    let slots: usize = clusterings.iter().map(|c| c.k).sum();
    // For each sample row, its slot (offset + label) in each clustering.
    let labels: Vec<usize> = sample
        .iter()
        .flat_map(|&i| clusterings.iter().zip(&offsets).map(move |(c, offset)| offset + c.labels[i]))
        .collect();
    let sizes = {
        let mut sizes = vec![0usize; slots];
        for slot in &labels {
            sizes[*slot] += 1;
        }
        sizes
    };
    let c = clusterings.len();
    let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get).min(m);
    let chunk = m.div_ceil(threads);
    let totals: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (points, labels, sizes, offsets) = (&points, &labels, &sizes, &offsets);
                scope.spawn(move || {
                    let mut total = vec![0.0; c];
                    let mut sums = vec![0.0; slots];
                    for i in t * chunk..((t + 1) * chunk).min(m) {
                        sums.iter_mut().for_each(|s| *s = 0.0);
                        let a = &points[i * d..(i + 1) * d];
                        for j in 0..m {
                            if j == i {
                                continue;
                            }
                            let b = &points[j * d..(j + 1) * d];
                            let distance = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
                            for slot in &labels[j * c..(j + 1) * c] {
                                sums[*slot] += distance;
                            }
                        }
                        for (q, clustering) in clusterings.iter().enumerate() {
                            let own = labels[i * c + q];
                            if sizes[own] < 2 {
                                continue;
                            }
                            let a = sums[own] / (sizes[own] - 1) as f64;
                            let b = (offsets[q]..offsets[q] + clustering.k)
                                .filter(|slot| *slot != own && sizes[*slot] > 0)
                                .map(|slot| sums[slot] / sizes[slot] as f64)
                                .fold(f64::INFINITY, f64::min);
                            if b.is_finite() && a.max(b) > 0.0 {
                                total[q] += (b - a) / a.max(b);
                            }
                        }
                    }
                    total
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| vec![f64::NAN; c])).collect()
    });
    (0..c).map(|q| totals.iter().map(|t| t[q]).sum::<f64>() / m as f64).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Two tight groups far apart: k = 2 finds them, and its silhouette is near 1 and above k = 3's.
    #[test]
    fn two_groups_give_silhouette_near_one() {
        let mut values = Vec::new();
        for i in 0..40 {
            let centre = if i < 20 { 0.0 } else { 10.0 };
            values.extend([centre + (i % 5) as f64 * 0.01, centre - (i % 3) as f64 * 0.01]);
        }
        let z = Array2::from_shape_vec((40, 2), values).unwrap();
        let two = kmeans(&z, 2, 7, 3).unwrap();
        assert!(two.labels[..20].iter().all(|l| *l == two.labels[0]));
        assert!(two.labels[20..].iter().all(|l| *l == two.labels[20] && *l != two.labels[0]));
        let three = kmeans(&z, 3, 7, 3).unwrap();
        let sample: Vec<usize> = (0..40).collect();
        let scores = mean_silhouettes(&z, &sample, &[&two, &three]);
        assert!(scores[0] > 0.99 && scores[0] > scores[1], "{scores:?}");
        assert!(two.inertia < 0.1 && three.inertia <= two.inertia);
    }

    /// The silhouette against a direct computation from its definition, on a small uneven example.
    #[test]
    fn silhouette_matches_its_definition() {
        let z = Array2::from_shape_vec((5, 1), vec![0.0_f64, 1.0, 3.0, 7.0, 8.0]).unwrap();
        let clustering = Clustering { k: 2, labels: vec![0, 0, 0, 1, 1], inertia: 0.0 };
        let distance = |i: usize, j: usize| (z[[i, 0]] - z[[j, 0]]).abs();
        let mut expected = 0.0;
        for i in 0..5 {
            let mean_to = |label: usize| {
                let others: Vec<usize> = (0..5).filter(|j| *j != i && clustering.labels[*j] == label).collect();
                others.iter().map(|j| distance(i, *j)).sum::<f64>() / others.len() as f64
            };
            let (a, b) = (mean_to(clustering.labels[i]), mean_to(1 - clustering.labels[i]));
            expected += (b - a) / a.max(b);
        }
        let got = mean_silhouettes(&z, &[0, 1, 2, 3, 4], &[&clustering])[0];
        assert!((got - expected / 5.0).abs() < 1e-12, "{got} against {}", expected / 5.0);
    }

    #[test]
    fn the_sample_is_seeded_and_sorted() {
        let a = silhouette_sample(1000, 10, 3);
        assert_eq!(a, silhouette_sample(1000, 10, 3));
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.len() == 10);
        assert_eq!(silhouette_sample(5, 10, 3), [0, 1, 2, 3, 4]);
    }
}
