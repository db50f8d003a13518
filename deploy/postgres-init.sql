-- The sample services' databases on the one PostgreSQL server of docker-compose.yml and
-- deploy/ (mounted into the postgres image's /docker-entrypoint-initdb.d, so it runs once,
-- when the data directory is first created). Each service keeps its tables and its stored
-- replies in a database of its own, as production services do; the choreography style of
-- docker-compose has a second set, as the two styles keep their state apart.
-- On a data directory made before a database was added here, create it by hand, e.g.
-- `docker compose exec postgres createdb -U sagakit console`.
CREATE DATABASE orders;
CREATE DATABASE payments;
CREATE DATABASE inventory;
CREATE DATABASE shipping;
CREATE DATABASE console;   -- the console's read model (SAGAKIT_READ_MODEL)
CREATE DATABASE orders_choreography;
CREATE DATABASE payments_choreography;
CREATE DATABASE inventory_choreography;
CREATE DATABASE shipping_choreography;
