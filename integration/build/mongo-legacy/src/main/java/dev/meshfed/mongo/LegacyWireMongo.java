package dev.meshfed.mongo;

import java.util.List;
import java.util.concurrent.CountDownLatch;

import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;

/**
 * mongo-java-server's in-memory backend on HOST:PORT, announcing MongoDB 3.4 (maxWireVersion 5).
 *
 * <p>Why 3.4: drivers speak OP_MSG only to servers with wire version 6 (MongoDB 3.6) or later; below
 * that they send every command and query as OP_QUERY on "db.$cmd" and read OP_REPLY, which is
 * what Envoy's Mongo proxy filter decodes and counts. The library's own ServerVersion enum starts
 * at 3.6, so the version is given through its public MongoVersion interface.
 *
 * <p>Usage: java -jar meshfed-mongo-legacy.jar HOST PORT. Prints "listening on HOST:PORT" once
 * bound and runs until killed.
 */
public final class LegacyWireMongo {
  private static final MongoVersion MONGO_3_4 =
      new MongoVersion() {
        @Override
        public List<Integer> getVersionArray() {
          return List.of(3, 4, 0);
        }

        @Override
        public int getWireVersion() {
          return 5;
        }
      };

  private LegacyWireMongo() {}

  public static void main(String[] args) throws InterruptedException {
    if (args.length != 2) {
      System.err.println("usage: java -jar meshfed-mongo-legacy.jar HOST PORT");
      System.exit(2);
    }
    MongoServer server = new MongoServer(new MemoryBackend().version(MONGO_3_4));
    server.bind(args[0], Integer.parseInt(args[1]));
    Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow));
    System.out.println(
        "listening on " + args[0] + ":" + args[1] + " (MongoDB " + MONGO_3_4.toVersionString()
            + ", maxWireVersion " + MONGO_3_4.getWireVersion() + ")");
    System.out.flush();
    new CountDownLatch(1).await();
  }
}
