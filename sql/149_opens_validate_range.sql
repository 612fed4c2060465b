-- Monthly partitions of `opens`, step 2 of 4: scans the table to validate the range 148
-- promised. VALIDATE CONSTRAINT takes a SHARE UPDATE EXCLUSIVE lock: the pixel's inserts,
-- the erasure's deletes and every read go on meanwhile (about 2 s per million opens on a
-- small machine); only other DDL and VACUUM of `opens` wait.
ALTER TABLE opens VALIDATE CONSTRAINT opens_legacy_range;
