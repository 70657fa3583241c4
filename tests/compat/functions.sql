-- Functions users reach for, over stored fields (nested, nullable, lists, times),
-- one statement per query, run on altdb and DuckDB alike.
-- strings
SELECT upper(event), lower("user.geo.city"), length(note), COUNT(*) FROM events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
SELECT substring(hi_card, 2, 3) AS s, COUNT(*) AS c FROM events GROUP BY s ORDER BY c DESC, s LIMIT 10;
SELECT concat(event, '-', "user.geo.country") AS k, COUNT(*) FROM events GROUP BY k ORDER BY k;
SELECT replace(note, 'quick', 'fast') AS r, COUNT(*) FROM events WHERE note IS NOT NULL GROUP BY r ORDER BY r;
SELECT trim('  ' || event || '  ') AS t, ltrim('xx' || event, 'x') AS l, rtrim(event || 'yy', 'y') AS r FROM events GROUP BY 1, 2, 3 ORDER BY 1;
SELECT split_part(note, ' ', 2) AS w, COUNT(*) FROM events WHERE note IS NOT NULL GROUP BY w ORDER BY w;
SELECT starts_with(hi_card, 'k1') AS s, COUNT(*) FROM events GROUP BY s ORDER BY s;
SELECT strpos(note, 'quick') AS p, COUNT(*) FROM events GROUP BY p ORDER BY p;
SELECT left(hi_card, 2) AS l, right(hi_card, 1) AS r, COUNT(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2;
SELECT lpad(CAST(qty AS VARCHAR), 3, '0') AS p, COUNT(*) FROM events GROUP BY p ORDER BY p;
SELECT reverse(event) AS r, repeat(event, 2) AS d FROM events GROUP BY 1, 2 ORDER BY 1;
SELECT "user.id" FROM events WHERE "user.id" ILIKE 'U99%' GROUP BY 1 ORDER BY 1;
-- regular expressions
SELECT regexp_replace(hi_card, '[0-9]+', 'N') AS r, COUNT(*) FROM events GROUP BY r;
SELECT COUNT(*) FROM events WHERE regexp_matches(note, '^(quick|slow)');
-- dates and times, on _event_time and on a string field holding ISO-8601 times
SELECT date_trunc('day', _event_time) AS d, COUNT(*) FROM events GROUP BY d ORDER BY d LIMIT 5;
SELECT extract(hour FROM _event_time) AS h, COUNT(*) FROM events GROUP BY h ORDER BY h;
SELECT date_part('dow', _event_time) AS d, COUNT(*) FROM events GROUP BY d ORDER BY d;
SELECT COUNT(*) FROM events WHERE ts >= '2024-01-02' AND ts < '2024-01-03';
SELECT date_trunc('hour', CAST(ts AS TIMESTAMP)) AS h, COUNT(*) FROM events GROUP BY h ORDER BY h LIMIT 5;
SELECT extract(epoch FROM _event_time) AS e FROM events ORDER BY e LIMIT 3;
SELECT CAST(_event_time AS DATE) AS d, COUNT(*) FROM events GROUP BY d ORDER BY d LIMIT 3;
SELECT id, _event_time + INTERVAL '1 hour' AS later FROM events ORDER BY id LIMIT 3;
SELECT COUNT(*) FROM events WHERE _event_time BETWEEN TIMESTAMP '2024-01-05 00:00:00' AND TIMESTAMP '2024-01-05 12:00:00';
-- lists
SELECT array_length(tags) AS n, COUNT(*) FROM events GROUP BY n ORDER BY n;
SELECT tags[1] AS first, COUNT(*) FROM events GROUP BY first ORDER BY first;
SELECT COUNT(*) FROM events WHERE array_has(tags, 'sale');
SELECT t, COUNT(*) FROM (SELECT unnest(tags) AS t FROM events) AS u GROUP BY t ORDER BY t;
-- window functions
SELECT id, qty, SUM(qty) OVER (ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s FROM events WHERE id < 20 ORDER BY id;
SELECT id, LAG(qty) OVER (ORDER BY id) AS p, LEAD(qty, 2) OVER (ORDER BY id) AS n FROM events WHERE id < 15 ORDER BY id;
SELECT event, id, DENSE_RANK() OVER (PARTITION BY event ORDER BY qty DESC) AS r FROM events WHERE id < 50 ORDER BY event, r, id;
SELECT id, NTILE(4) OVER (ORDER BY id) AS t, FIRST_VALUE(qty) OVER (ORDER BY id) AS f, PERCENT_RANK() OVER (ORDER BY qty) AS pr FROM events WHERE id < 12 ORDER BY id;
SELECT "user.geo.country", AVG(qty) OVER (PARTITION BY "user.geo.country") AS a FROM events WHERE id < 40 ORDER BY 1, 2;
-- aggregates
SELECT "user.geo.country", string_agg(event, ',' ORDER BY event) AS e FROM events WHERE id < 30 GROUP BY 1 ORDER BY 1;
SELECT stddev_samp(qty), var_pop(qty), median(qty) FROM events;
SELECT bool_and(flag), bool_or(flag) FROM events;
SELECT COUNT(*) FILTER (WHERE flag) AS f, SUM(qty) FILTER (WHERE event = 'buy') AS b FROM events;
SELECT CASE WHEN qty > 5 THEN 'hi' ELSE 'lo' END AS c, COALESCE(amount, 0) > 100 AS big, NULLIF(qty, 3) IS NULL AS three, COUNT(*) FROM events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
-- arithmetic
SELECT id, round(amount, 1) AS r, floor(amount) AS f, ceil(amount) AS c, abs(0 - qty) AS a, power(qty, 2) AS p, sqrt(qty) AS s, ln(qty) AS l FROM events WHERE id < 5 ORDER BY id;
SELECT id, qty % 3 AS m, qty / 2 AS d, CAST(qty AS DOUBLE) / 4 AS f FROM events WHERE id < 5 ORDER BY id;
