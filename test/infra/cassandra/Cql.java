// A tiny CQL client for checking the test Cassandra by hand or from scripts, run by
// cql.sh as a single-file Java program (no build step). It uses the DataStax Java
// driver 3.x that cassandra-all already ships (shaded), so it needs no download.
// Usage: java -cp '<cassandra lib>/*' Cql.java HOST:PORT "CQL statement" ...
// Prints each result row; exits non-zero on the first failing statement.
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.Row;
import com.datastax.driver.core.Session;

public class Cql {
  public static void main(String[] args) {
    if (args.length < 2) {
      System.err.println("usage: Cql HOST:PORT STATEMENT...");
      System.exit(2);
    }
    String[] hostPort = args[0].split(":");
    try (Cluster cluster = Cluster.builder()
            .addContactPoint(hostPort[0])
            .withPort(Integer.parseInt(hostPort[1]))
            // The driver's JMX reporter needs metrics 3.x; cassandra-all ships 4.x.
            .withoutJMXReporting()
            .withoutMetrics()
            .build();
        Session session = cluster.connect()) {
      for (int i = 1; i < args.length; i++) {
        for (Row row : session.execute(args[i])) {
          System.out.println(row);
        }
      }
    } catch (RuntimeException e) {
      System.err.println("cql: " + e);
      System.exit(1);
    }
  }
}
