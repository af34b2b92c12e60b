-- Hot-dog-style image ETL in SQL: `quiver sql -f examples/hotdog_etl.sql`
-- (scripts/main.sh assembles quiver-data/samples/ first).
-- Photos: decode, centre-crop to a square, resize to 200x200, store as JPEG in tf.train.Examples.
-- image_resize(image_center_crop(image_decode(...))) is planned as one fused step that decodes
-- JPEGs at a reduced DCT scale.

COPY (
  SELECT path, label, image_resize(image_center_crop(image_decode(content)), 200, 200) AS image
  FROM read_images('quiver-data/samples/photos/train/')
) TO 'quiver-data/tfrecords/photos/train/' STORED AS TFRECORD OPTIONS (image_format 'jpeg');

COPY (
  SELECT path, label, image_resize(image_center_crop(image_decode(content)), 200, 200) AS image
  FROM read_images('quiver-data/samples/photos/test/')
) TO 'quiver-data/tfrecords/photos/test/' STORED AS TFRECORD OPTIONS (image_format 'jpeg');

-- Fashion-MNIST: lossless PNG images, gzip-compressed shards.
COPY (
  SELECT label, image_decode(content) AS image FROM read_images('quiver-data/samples/fashion/train/')
) TO 'quiver-data/tfrecords/fashion/train/' STORED AS TFRECORD OPTIONS (compression 'gzip');

COPY (
  SELECT label, image_decode(content) AS image FROM read_images('quiver-data/samples/fashion/test/')
) TO 'quiver-data/tfrecords/fashion/test/' STORED AS TFRECORD OPTIONS (compression 'gzip');

-- Read the shards back: the schema is inferred from the Examples, every CRC is checked.
CREATE EXTERNAL TABLE photos_train STORED AS TFRECORD LOCATION 'quiver-data/tfrecords/photos/train/';

SELECT label, count(*) AS images, min("image/width") AS width, min("image/height") AS height
FROM photos_train GROUP BY label ORDER BY label;

CREATE EXTERNAL TABLE fashion_train STORED AS TFRECORD LOCATION 'quiver-data/tfrecords/fashion/train/';

SELECT label, count(*) AS images FROM fashion_train GROUP BY label ORDER BY label;
