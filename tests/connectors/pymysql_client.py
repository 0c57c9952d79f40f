import sys
import pymysql

host, port, db, table, user, password = sys.argv[1], int(sys.argv[2]), *sys.argv[3:7]
c = pymysql.connect(host=host, port=port, user=user, password=password, database=db)
cur = c.cursor()
cur.execute("SELECT 1")
assert cur.fetchone()[0] == 1
c.begin()
cur.execute(f"INSERT INTO {table}(val) VALUES (%s)", ("committed",))
c.commit()
c.begin()
cur.execute(f"UPDATE {table} SET val = %s", ("rolled back",))
c.rollback()
cur.execute(f"SELECT val FROM {table} ORDER BY id")
rows = [r[0] for r in cur.fetchall()]
assert rows == ["committed"], rows
cur.execute(f"SELECT COUNT(*) FROM {table} WHERE val = %s", ("committed",))
assert cur.fetchone()[0] == 1
assert c.get_autocommit() is False
cur.execute("SELECT @@autocommit")
assert int(cur.fetchone()[0]) == 0, "PyMySQL turns autocommit off at connect"
c.close()
print("ok")
