// pgjdbc, the driver DBeaver and Metabase connect with, against sluice's
// Postgres wire protocol: what their schema browsers ask through
// DatabaseMetaData, and a prepared statement with an int parameter (sent
// in binary). Prints one line per answer for tests/pgwire.rs to check.
//
// usage: java -cp /usr/share/java/postgresql.jar JdbcCatalog.java
//            <host:port> <user> <password> <table> <sql with one ?> <int>
import java.sql.*;
import java.util.Properties;

public class JdbcCatalog {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        try (Connection c = DriverManager.getConnection("jdbc:postgresql://" + args[0] + "/sluice", props)) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("product " + md.getDatabaseProductName() + " " + md.getDatabaseMajorVersion());
            try (ResultSet rs = md.getSchemas()) {
                while (rs.next()) System.out.println("schema " + rs.getString("TABLE_SCHEM"));
            }
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) System.out.println("table " + rs.getString("TABLE_NAME") + " " + rs.getString("TABLE_TYPE"));
            }
            try (ResultSet rs = md.getColumns(null, "public", args[3], "%")) {
                while (rs.next()) System.out.println("column " + rs.getString("COLUMN_NAME") + " " + rs.getString("TYPE_NAME"));
            }
            try (ResultSet rs = md.getPrimaryKeys(null, "public", args[3])) {
                while (rs.next()) System.out.println("primary key " + rs.getString("COLUMN_NAME"));
            }
            try (ResultSet rs = md.getIndexInfo(null, "public", args[3], false, true)) {
                while (rs.next()) System.out.println("index " + rs.getString("INDEX_NAME"));
            }
            try (PreparedStatement ps = c.prepareStatement(args[4])) {
                ps.setInt(1, Integer.parseInt(args[5]));
                try (ResultSet rs = ps.executeQuery()) {
                    int columns = rs.getMetaData().getColumnCount();
                    while (rs.next()) {
                        StringBuilder row = new StringBuilder("row");
                        for (int i = 1; i <= columns; i++) row.append(' ').append(rs.getString(i));
                        System.out.println(row);
                    }
                }
            }
        }
    }
}
