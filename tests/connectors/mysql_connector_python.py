import sys
import mysql.connector

host, port, db, table, user, password = sys.argv[1], int(sys.argv[2]), *sys.argv[3:7]
# The pure-Python protocol (the C extension needs the MySQL client library).
for pure in (True,):
    c = mysql.connector.connect(host=host, port=port, user=user, password=password, database=db,
                                use_pure=pure, ssl_disabled=True)
    cur = c.cursor(prepared=True)
    cur.execute("SELECT 1")
    assert cur.fetchone()[0] == 1
    c.start_transaction()
    cur.execute(f"INSERT INTO {table}(val) VALUES (%s)", (f"committed {pure}",))
    c.commit()
    c.start_transaction()
    cur.execute(f"UPDATE {table} SET val = %s", ("rolled back",))
    c.rollback()
    cur.execute(f"SELECT COUNT(*) FROM {table} WHERE val = %s", (f"committed {pure}",))
    assert cur.fetchone()[0] == 1
    cur.execute(f"SELECT COUNT(*) FROM {table} WHERE val = %s", ("rolled back",))
    assert cur.fetchone()[0] == 0
    c.close()
print("ok")
