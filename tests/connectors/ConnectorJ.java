// MariaDB Connector/J (Debian's libmariadb-java, 2.7) with server-side prepared statements.
import java.sql.*;

public class ConnectorJ {
    public static void main(String[] a) throws Exception {
        String url = "jdbc:mariadb://" + a[0] + ":" + a[1] + "/" + a[2] + "?useServerPrepStmts=true";
        String table = a[3];
        try (Connection c = DriverManager.getConnection(url, a[4], a.length > 5 ? a[5] : "")) {
            try (ResultSet r = c.createStatement().executeQuery("SELECT 1")) {
                r.next();
                if (r.getInt(1) != 1) throw new Exception("SELECT 1");
            }
            c.setAutoCommit(false);
            try (PreparedStatement p = c.prepareStatement("INSERT INTO " + table + "(val) VALUES (?)")) {
                p.setString(1, "committed");
                p.executeUpdate();
            }
            c.commit();
            try (PreparedStatement p = c.prepareStatement("UPDATE " + table + " SET val = ?")) {
                p.setString(1, "rolled back");
                p.executeUpdate();
            }
            c.rollback();
            try (PreparedStatement p = c.prepareStatement("SELECT COUNT(*) FROM " + table + " WHERE val = ?")) {
                p.setString(1, "committed");
                try (ResultSet r = p.executeQuery()) {
                    r.next();
                    if (r.getInt(1) != 1) throw new Exception("count " + r.getInt(1));
                }
            }
            c.setAutoCommit(true);
            try (ResultSet r = c.createStatement().executeQuery("SELECT @@autocommit")) {
                r.next();
                if (r.getInt(1) != 1) throw new Exception("autocommit " + r.getInt(1));
            }
        }
        System.out.println("ok");
    }
}
