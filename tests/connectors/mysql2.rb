# Ruby's mysql2 gem (libmariadb), with its server-side prepared statements.
require 'mysql2'
host, port, db, table, user, password = ARGV
c = Mysql2::Client.new(host: host, port: port.to_i, username: user, password: password, database: db)
raise 'SELECT 1' unless c.query('SELECT 1 AS one').first['one'] == 1
c.query('BEGIN')
c.prepare("INSERT INTO #{table}(val) VALUES (?)").execute('committed')
c.query('COMMIT')
c.query('BEGIN')
c.prepare("UPDATE #{table} SET val = ?").execute('rolled back')
c.query('ROLLBACK')
rows = c.query("SELECT val FROM #{table} ORDER BY id").map { |r| r['val'] }
raise "rows #{rows}" unless rows == ['committed']
n = c.prepare("SELECT COUNT(*) AS n FROM #{table} WHERE val = ?").execute('committed').first['n']
raise "count #{n}" unless n == 1
puts 'ok'
