-- How often each lookahead k was chosen, per run and policy: steps at k and their share of the run's
-- steps (k = 0 is a plain decoding step).
SELECT s.run_id, g.lookahead_policy, s.k,
       count(*) AS steps,
       round(count(*) / sum(count(*)) OVER (PARTITION BY s.run_id, g.lookahead_policy), 4) AS share
FROM steps s JOIN generations g USING (run_id, shard, row_id)
GROUP BY s.run_id, g.lookahead_policy, s.k
ORDER BY s.run_id, g.lookahead_policy, s.k;
