//! Recycled buffers for the low-resolution mask logits that leave the inference thread, one 256×256 plane a box.
//!
//! A plane is copied out of the decoder session's output on the inference thread and freed on a CPU thread once
//! it is upsampled. With glibc's allocator each fresh 256 KiB buffer was fresh pages: freeing it returns the top of
//! the heap to the system (the trim threshold is 128 KiB), so the next box faulted 64 pages in again, about half a
//! millisecond a box on the inference thread (a `perf` profile of the full-size chain put two fifths of that
//! thread's time outside `session.run` there). Buffers dropped here go back to a small shared free list instead, and
//! the next box's copy reuses one that is already mapped.

use std::sync::Mutex;

/// Buffers waiting to be reused, at most `keep` of them; more are freed as usual.
pub struct FreeList {
    free: Mutex<Vec<Vec<f32>>>,
    keep: usize,
}

impl FreeList {
    pub const fn new(keep: usize) -> FreeList {
        FreeList { free: Mutex::new(Vec::new()), keep }
    }

    /// A copy of `values`, in a recycled buffer when one is free.
    pub fn copy_of(&'static self, values: &[f32]) -> Plane {
        let recycled = self.free.lock().ok().and_then(|mut free| free.pop());
        let mut buffer = recycled.unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(values);
        Plane { buffer, home: self }
    }

    fn give_back(&self, buffer: Vec<f32>) {
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.keep
        {
            free.push(buffer);
        }
    }
}

/// The process's free list of mask planes: 64 of them is 16 MiB of 256×256 planes, more than the boxes of a
/// micro-batch usually hold between the inference thread and the CPU threads.
pub static PLANES: FreeList = FreeList::new(64);

/// A copy of mask logits whose buffer goes back to its free list when dropped.
pub struct Plane {
    buffer: Vec<f32>,
    home: &'static FreeList,
}

impl Plane {
    /// A copy of `values`, in a buffer of the process's free list when one is free.
    pub fn copy_of(values: &[f32]) -> Plane {
        PLANES.copy_of(values)
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        if buffer.capacity() > 0 {
            self.home.give_back(buffer);
        }
    }
}

impl std::ops::Deref for Plane {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.buffer
    }
}

impl Clone for Plane {
    fn clone(&self) -> Plane {
        self.home.copy_of(&self.buffer)
    }
}

impl PartialEq for Plane {
    fn eq(&self, other: &Plane) -> bool {
        self.buffer == other.buffer
    }
}

impl std::fmt::Debug for Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plane({} values)", self.buffer.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(keep: usize) -> &'static FreeList {
        Box::leak(Box::new(FreeList::new(keep)))
    }

    #[test]
    fn a_dropped_plane_lends_its_buffer_to_the_next_copy() {
        let home = list(4);
        let first = home.copy_of(&[1.0; 1000]);
        let address = first.as_ptr();
        drop(first);
        let second = home.copy_of(&[2.0; 10]);
        assert_eq!(second.as_ptr(), address, "the freed buffer was not reused");
        assert_eq!(&second[..], &[2.0; 10][..], "a recycled buffer keeps none of its old values");
        let third = home.copy_of(&[3.0; 10]);
        assert_ne!(third.as_ptr(), address, "one buffer lent twice");
    }

    #[test]
    fn the_free_list_keeps_at_most_its_cap() {
        let home = list(3);
        let planes: Vec<Plane> = (0..8).map(|_| home.copy_of(&[0.5; 4])).collect();
        drop(planes);
        assert_eq!(home.free.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_clone_is_an_equal_copy_in_another_buffer() {
        let home = list(2);
        let plane = home.copy_of(&[1.0, 2.0, 3.0]);
        let copy = plane.clone();
        assert_eq!(copy, plane);
        assert_ne!(copy.as_ptr(), plane.as_ptr());
    }
}
