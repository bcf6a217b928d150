-- The notes of admin stock changes are pruned once no change can still ask for its outcome (the
-- sweeper, in bounded batches, oldest first: src/worker/sweeper.rs); this index serves that.
CREATE INDEX ix_stock_adjustments_created ON stock_adjustments (created_at);
