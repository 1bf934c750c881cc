# comment

FROM
